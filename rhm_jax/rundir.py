"""The write side of a work directory: ``config.json`` with provenance, jsonl rows written durably.

Layout of a work directory::

    config.json     {"config": ..., "provenance": ..., "grid": [one dict per model]}; the provenance
                    gets ``wall_time_s`` and ``finished_utc`` when the run ends
    metrics.jsonl   one JSON object per (model, evaluation step); non-finite floats are null
    train.jsonl     one JSON object per (model, training chunk): mean loss over the chunk, wall time
                    since the run began, the program's model-steps per second over the chunk
    score_<step>_<K>_<S>.jsonl  rows of a re-scoring (K samples, S sampler steps or 'exact'), if any
    checkpoints/    orbax checkpoints (rhm_jax.checkpoint), one subdirectory per sub-grid
    summary.txt     the per-model table of the end of a run (``summary_table``)

Resuming needs an identical config (up to ``config.EXECUTION_KEYS``; a key the stored config lacks
compares as its schema default). ``force=True`` never deletes: it moves the old work directory
aside to ``<workdir>.bak-<UTC timestamp>`` and starts fresh; it refuses a directory that is not a
work directory, the current directory (or one above it) and a directory whose lock
(``rhm_jax.lock``) or whose slices' locks another process holds. A directory holding only the lock
file and stale ``*.tmp`` files (an interrupted first write) counts as empty.
Reading the tables back (``load``, ``pick``, the summary) is ``rhm_jax.results``.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from rhm_jax import config as config_lib
from rhm_jax import hostflags, keys, lock, timing

log = logging.getLogger(__name__)

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections", "pandas", "scipy",
            "matplotlib")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_FILE = "train.jsonl"
SUMMARY_FILE = "summary.txt"
SCORE_FILE = re.compile(r"^score_(\d+)_(\d+)_(\d+|exact)\.jsonl$")  # step, num_samples, sampler_steps
ARRAY_FILE = "array.json"  # a job-array root's manifest (launch.slurm): K and the job ids
SLICE_DIR = re.compile(r"^slice_\d+$")  # a job-array root's slice work directories
LOCAL_ENTRIES = (METRICS_FILE, TRAIN_FILE, SUMMARY_FILE, "checkpoints")  # what a run writes into its own directory
LAYOUTS = {"local": "a run's own work directory (launch.local, the Python API)",
           "array": "a job-array root (launch.slurm: array.json, slice_<k>/)"}


# ----------------------------------------------------------------------------- provenance

def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision(path: str | None = None) -> dict[str, Any]:
    """{'revision', 'dirty'} of the git checkout holding ``path``; None for both outside one.

    Without ``path``: the checkout this package is imported from (only if it is that checkout's own
    top level, not a virtual environment inside some clone), else the commit written into the
    package when it was built (``rhm_jax/_build_info.py``, by setup.py), with ``'from': 'build'``.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = _git_checkout(path or package_root, require_top=None if path else package_root)
    if path is not None or found["revision"] is not None:
        return found
    try:
        from rhm_jax import _build_info  # absent in a source checkout: written at build time only
    except ImportError:
        return found
    if _build_info.REVISION is None:
        return found
    return {"revision": _build_info.REVISION, "dirty": _build_info.DIRTY, "from": "build"}


def _git_checkout(path: str, require_top: str | None = None) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if require_top is not None and os.path.realpath(top) != os.path.realpath(require_top):
            return {"revision": None, "dirty": None}
        revision = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": revision, "dirty": bool(status)}


def provenance() -> dict[str, Any]:
    """Package versions (rhm_jax's own included), git revision, python, devices, host and UTC date."""
    import jax

    import rhm_jax

    devices = jax.devices()
    return {
        "python": sys.version.split()[0],
        "packages": {"rhm_jax": rhm_jax.__version__, **{name: _version(name) for name in PACKAGES}},
        "git": git_revision(),
        "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)},
        "xla": hostflags.record(),  # XLA_FLAGS the process ran with, and whether rhm_jax set them (issue 25)
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- JSON

def to_json_value(value: Any) -> Any:
    """Plain JSON value: numpy/jax scalars and arrays unwrapped, non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "__array__"):  # numpy or jax arrays
        array = np.asarray(value)
        return to_json_value(array.item() if array.ndim == 0 else array.tolist())
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} as JSON")


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Re-raise an OSError that names no file (disk full, an I/O error) as one naming ``path``."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), path) from err
        raise


def write_atomic(path: str, text: str) -> None:
    """Write a whole file through a temporary file, fsync and an atomic rename (an error names ``path``)."""
    tmp = f"{path}.tmp"
    with naming(path):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_json_atomic(path: str, payload: Any) -> None:
    """Write JSON atomically (``write_atomic``; strict JSON: no NaN)."""
    write_atomic(path, json.dumps(payload, indent=1, sort_keys=True, allow_nan=False))


def read_config_json(workdir: str) -> dict:
    """The parsed ``config.json`` of a work directory; ValueError naming the file if absent or malformed."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"workdir={workdir!r} holds no {CONFIG_FILE}: not an rhm_jax work directory")
    with open(path) as f:
        try:
            stored = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); restore it or choose another --workdir") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("config", {}), dict):
        raise ValueError(f"{path} must hold a JSON object with a 'config' object, found {type(stored).__name__}"
                         "; restore it or choose another --workdir")
    return stored


# ----------------------------------------------------------------------------- work directory

def _contents(workdir: str) -> list[str]:
    """Entries of a directory that count: not the lock file, not stale temporary files."""
    if not os.path.isdir(workdir):
        return []
    return [n for n in os.listdir(workdir) if n != lock.LOCK_FILE and not n.endswith(".tmp")]


def check_not_foreign(workdir: str, force: bool = False) -> None:
    """ValueError (one line) for a directory that holds files but no config.json: not a work directory.

    Called before anything (the lock file included) is created in it.
    """
    if not _contents(workdir) or os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
        return
    if force:
        raise ValueError(f"--force will not move workdir={workdir!r}: it holds files but no {CONFIG_FILE}, so it is"
                         " not an rhm_jax work directory; choose another --workdir")
    raise ValueError(f"workdir={workdir!r} is not empty and holds no {CONFIG_FILE}; choose a new --workdir, or pass"
                     " --force to move the old directory aside (nothing is deleted)")


def layouts(workdir: str) -> list[str]:
    """The layouts found in ``workdir``: 'local' (its own rows or checkpoints), 'array' (array.json or
    slice_<k>/ directories); none for an empty or new directory."""
    if not os.path.isdir(workdir):
        return []
    names = os.listdir(workdir)
    found = []
    if any(n in LOCAL_ENTRIES for n in names):
        found.append("local")
    if ARRAY_FILE in names or any(SLICE_DIR.match(n) and os.path.isdir(os.path.join(workdir, n)) for n in names):
        found.append("array")
    return found


def check_layout(workdir: str, wanted: str | None = None) -> None:
    """ValueError (one line) when ``workdir`` holds two layouts, or one other than ``wanted``."""
    found = layouts(workdir)
    if len(found) > 1:
        raise ValueError(f"workdir={workdir!r} holds two layouts, {LAYOUTS['local']} and {LAYOUTS['array']}: its"
                         " rows would be two versions of the same models; move one of them elsewhere")
    if wanted is not None and found and found[0] != wanted:
        how = ("run launch.slurm with the same --workdir and --slices to resume it" if found[0] == "array"
               else "run launch.local (or the Python API) with the same --workdir to resume it")
        raise ValueError(f"workdir={workdir!r} is {LAYOUTS[found[0]]}, not {LAYOUTS[wanted]}: {how},"
                         " or choose another --workdir")


def move_aside(workdir: str) -> bool:
    """Move a non-empty work directory to ``<workdir>.bak-<timestamp>`` (``--force``); False if empty.

    ValueError (nothing moved) for the current directory or one above it, for a directory that is
    not a work directory, and while a process holds its lock or a slice's lock.
    """
    workdir = os.path.abspath(workdir)
    if not _contents(workdir):
        return False
    here = os.path.realpath(os.getcwd())
    if os.path.commonpath([here, os.path.realpath(workdir)]) == os.path.realpath(workdir):
        raise ValueError(f"--force will not move workdir={workdir!r}: it is the current directory or holds it")
    check_not_foreign(workdir, force=True)
    with contextlib.ExitStack() as held:  # running slices of a job array keep the root in use
        for name in sorted(os.listdir(workdir)):
            if re.fullmatch(r"slice_\d+", name) and os.path.isdir(os.path.join(workdir, name)):
                held.enter_context(lock.hold(os.path.join(workdir, name), "--force"))
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        backup = f"{workdir}.bak-{stamp}"
        os.rename(workdir, backup)
    log.warning("--force: moved the old work directory %s aside to %s", workdir, backup)
    return True


def prepare_workdir(workdir: str, config, grid_rows: Sequence[dict], force: bool = False,
                    points: Sequence[dict] | None = None) -> str:
    """Create or check a work directory; returns 'new' or 'resume'.

    ``points``: the sweep as declared (``plan.Plan.points``), recorded in config.json; a single run
    (None) records none.
    Existing directory with the same config and grid -> 'resume'. A different one -> ValueError
    naming the differing keys (nothing is touched) unless ``force``, which moves the old work
    directory to ``<workdir>.bak-<timestamp>`` (``move_aside``) and starts fresh.
    """
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir={workdir!r} is a file, not a directory")
    config_dict = config_lib.to_dict(config)
    grid = to_json_value(list(grid_rows))
    if force:
        move_aside(workdir)
    points = None if points is None else to_json_value(list(points))
    if _contents(workdir):
        _check_same(workdir, config_dict, grid, points)
        return "resume"
    os.makedirs(workdir, exist_ok=True)
    payload = {"config": config_dict, "provenance": to_json_value(provenance()), "grid": grid}
    if points is not None:
        payload["points"] = points
    write_json_atomic(os.path.join(workdir, CONFIG_FILE), payload)
    return "new"


def record_wall_time(workdir: str, seconds: float, split: dict | None = None) -> None:
    """Write the run's wall time (summed over its processes), where it went (``timing.PARTS``, as
    ``wall_split_s``, with the remainder as 'other') and the end date into config.json's provenance."""
    path = os.path.join(workdir, CONFIG_FILE)
    payload = read_config_json(workdir)
    record = dict(wall_time_s=round(float(seconds), 3),
                  finished_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if split is not None:
        parts = {part: round(float(split.get(part) or 0.0), 3) for part in timing.PARTS}
        record["wall_split_s"] = dict(parts, other=round(timing.remainder(parts, seconds), 3))
    payload.setdefault("provenance", {}).update(record)
    write_json_atomic(path, payload)


def record_report_time(workdir: str, seconds: float) -> None:
    """Write the seconds the entry point spent on the report after the run (the 'report' part of
    ``wall_split_s``; a report drawn again replaces it). Nothing without a recorded split."""
    payload = read_config_json(workdir)
    split = payload.get("provenance", {}).get("wall_split_s")
    if not isinstance(split, dict):
        return
    split["report"] = round(float(seconds), 3)
    write_json_atomic(os.path.join(workdir, CONFIG_FILE), payload)


def split_line(workdir: str) -> str:
    """One line of where the run's wall time went (``timing.format_split``), '' for a run without one.

    Its wall time is the run's (``wall_time_s``) plus the report's, when the entry point made one."""
    provenance_ = read_config_json(workdir).get("provenance", {})
    split, wall = provenance_.get("wall_split_s"), provenance_.get("wall_time_s")
    if not isinstance(split, dict) or not isinstance(wall, (int, float)):
        return ""
    return timing.format_split(split, float(wall) + float(split.get("report") or 0.0))


def _check_same(workdir: str, config_dict: dict, grid: list, points: list | None = None) -> None:
    """Raise ValueError unless the stored config, sweep and grid equal these (execution keys aside)."""
    how = "choose a new --workdir, or pass --force to move the old directory aside (nothing is deleted)"
    check_not_foreign(workdir)
    stored = read_config_json(workdir)
    # a key the stored config lacks (added to the schema since) compares as its default
    stored_config = config_lib.with_defaults(stored.get("config", {}))
    differing = config_lib.differences(stored_config, config_dict, ignore=config_lib.EXECUTION_KEYS)
    if differing:
        details = ", ".join(
            f"{k}: {config_lib.flatten(stored_config).get(k, '<missing>')!r} -> "
            f"{config_lib.flatten(config_dict).get(k, '<missing>')!r}" for k in differing[:10])
        raise ValueError(f"workdir={workdir!r} holds a run with a different config ({details}); {how}")
    # no points (a work directory of a single run, or written before sweeps) is the sweep [{}]
    if (stored.get("points") or [{}]) != (points or [{}]):
        raise ValueError(f"workdir={workdir!r} holds a run of a different sweep ({len(stored.get('points') or [])}"
                         f" points stored, {len(points or [])} now, or other values); {how}")
    stored_grid = stored.get("grid")
    if isinstance(stored_grid, list) and any(isinstance(r, dict) and "data_seed" not in r for r in stored_grid) \
            and any("data_seed" in r and r["seed"] != r["data_seed"] for r in grid):
        raise ValueError(f"workdir={workdir!r} was written before data.seed set each model's batch order (its"
                         " models' order followed train.seeds); resuming would train the rest on another order."
                         f" Finish it with the version that wrote it, or {how}")
    # A directory written before a grid-row field existed lacks it: compare the fields it has (its
    # config, compared above through the schema's defaults, fixes the rest).
    if not isinstance(stored_grid, list) or len(stored_grid) != len(grid) or any(
            not isinstance(old, dict) or {k: new.get(k) for k in old} != old for old, new in zip(stored_grid, grid)):
        raise ValueError(f"workdir={workdir!r} holds a run with a different grid of models; {how}")
    changed = config_lib.differences(stored_config, config_dict)
    layout = [k for k in changed if keys.KEYS.get(k) and keys.KEYS[k].kind == "layout"]
    if set(changed) - set(layout):
        log.info("resuming %s with other execution settings (results unaffected): %s", workdir,
                 [k for k in changed if k not in layout])
    if layout:
        log.info("resuming %s with other layout settings (keys and data unaffected; float32 rounding of what"
                 " is still to run may differ, see rhm_jax.keys.LAYOUT_ROUNDING): %s", workdir, layout)


# ----------------------------------------------------------------------------- metrics.jsonl

def read_rows(path: str) -> list[dict]:
    """Rows of a jsonl file; a torn last line (a write cut by a kill) is skipped with a warning."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
            log.warning("%s: skipping a torn last line (an interrupted write)", path)
    return rows


def write_rows(path: str, rows: Iterable[dict]) -> None:
    """Write a whole jsonl file atomically (``write_atomic``)."""
    write_atomic(path, "".join(json.dumps(to_json_value(r), allow_nan=False) + "\n" for r in rows))


def merge_rows(path: str, rows: list[dict]) -> None:
    """Write ``rows`` into a jsonl file, replacing its earlier rows of the same models (by ``model``)."""
    models = {r["model"] for r in rows}
    kept = [r for r in read_rows(path) if r["model"] not in models]
    write_rows(path, sorted(kept + list(rows), key=lambda r: r["model"]))


def _torn(path: str) -> bool:
    """True when the file's last line lacks its newline (a write cut short)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


class MetricsWriter:
    """Appends rows to ``<workdir>/metrics.jsonl`` (or another table): one flush + fsync per ``write``."""

    def __init__(self, workdir: str, name: str = METRICS_FILE):
        self.path = os.path.join(workdir, name)

    def write(self, rows: Iterable[dict]) -> None:
        """Append rows (one evaluation's worth) durably; non-finite floats become null."""
        text = "".join(json.dumps(to_json_value(r), allow_nan=False) + "\n" for r in rows)
        if not text:
            return
        with naming(self.path), open(self.path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[dict]:
        """All rows written so far."""
        return read_rows(self.path)

    def truncate_after(self, step: int, models: Iterable[int] | None = None) -> int:
        """Drop rows with ``step > step`` (of the given grid indices only, if given); returns #dropped.

        Used on resume from a checkpoint at ``step`` so that the file equals an uninterrupted
        run's. Rewrites through a temporary file and an atomic rename.
        """
        if not os.path.exists(self.path):
            return 0
        models = None if models is None else set(int(m) for m in models)
        rows = read_rows(self.path)
        keep = [r for r in rows if r["step"] <= step or (models is not None and r["model"] not in models)]
        if len(keep) < len(rows) or _torn(self.path):  # a finished run on a read-only disk resumes
            write_rows(self.path, keep)
        return len(rows) - len(keep)
