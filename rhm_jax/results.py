"""Results of work directories read back: ``load`` (pandas tables), ``pick`` (a model's reading), summaries.

The layout of a work directory and everything that writes it (config.json, jsonl rows, the
metrics writer, ``prepare_workdir``) is ``rhm_jax.rundir``; its public names are re-exported here
(``results.read_rows``, ``results.CONFIG_FILE``, ...) for the callers that read and write both.
pandas is imported only by ``load``. ``load(workdir, kind)`` reads any of the three tables.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Sequence

from rhm_jax import config as config_lib
from rhm_jax import health, keys
from rhm_jax.rundir import (ARRAY_FILE, CONFIG_FILE, METRICS_FILE, PACKAGES, SCORE_FILE, SUMMARY_FILE,  # noqa: F401
                            TRAIN_FILE, MetricsWriter, check_layout, check_not_foreign,
                            git_revision, merge_rows, move_aside, prepare_workdir,
                            provenance, read_config_json, read_rows, record_report_time, record_wall_time,
                            split_line, to_json_value, write_atomic, write_json_atomic, write_rows)

KINDS = ("metrics", "train", "scores")
# Which evaluation of each model the end-of-run summary (and launch.report, launch.quickstart) read
# by default: its 'best' (lowest test loss: early stopping; a small-P model that ends up copying its
# training set looks valid at every level at its 'last').
DEFAULT_READING = "best"
READINGS = {"last": "its last evaluation",
            "best": "its best evaluation (lowest test loss: with common random numbers where test_loss_se "
                    "is logged, else the mean over diffusion-time windows)"}
# Config values copied into every row by ``load`` where the row does not carry its own (column
# name -> dotted key): the keys with a short column name (``rhm_jax.keys``) that results depend
# on, except the grid keys (P, seed and lr come from each model's grid row). A swept key's column
# comes from the rows, so its per-model value wins over config.json's constant.
CONFIG_COLUMNS = {key.column: name for name, key in keys.KEYS.items()
                  if key.column != name and key.kind not in keys.RESUMABLE and name not in keys.GRID_KEYS}
RENAMED_COLUMNS = {"copy": "copies"}  # older work directories wrote these names


# ----------------------------------------------------------------------------- tables

def _run_dirs(workdir: str) -> list[str]:
    """The work directory, then the ``slice_<k>/`` runs of a job-array root in order of k.

    ValueError (one line) for a directory holding both layouts (``rundir.check_layout``).
    """
    check_layout(workdir)
    slices = [n for n in os.listdir(workdir) if re.fullmatch(r"slice_\d+", n)
              and os.path.isdir(os.path.join(workdir, n))]
    return [workdir] + [os.path.join(workdir, n) for n in sorted(slices, key=lambda n: int(n[len("slice_"):]))]


def workdir_rows(workdir: str, name: str = METRICS_FILE) -> list[dict]:
    """Rows of one table of a work directory; a job-array root also merges its ``slice_<k>/`` runs."""
    rows = []
    for directory in _run_dirs(workdir):
        rows += read_rows(os.path.join(directory, name))  # model indices are global
    return rows


def score_rows(workdir: str) -> list[dict]:
    """Rows of every ``score_<step>_<K>_<S>.jsonl`` (slices merged), with num_samples and sampler_steps."""
    rows = []
    for directory in _run_dirs(workdir):
        for name in sorted(os.listdir(directory)):
            match = SCORE_FILE.match(name)
            if match:
                K, S = int(match.group(2)), match.group(3)
                S = int(S) if S.isdigit() else S  # 'exact': the masked process's exact sampler
                rows += [dict(r, num_samples=K, sampler_steps=S) for r in read_rows(os.path.join(directory, name))]
    return rows


def _renamed(row: dict) -> dict:
    """A row with the current column names (``copy`` -> ``copies``)."""
    row = dict(row)
    for old, new in RENAMED_COLUMNS.items():
        if old in row and new not in row:
            row[new] = row.pop(old)
    return row


def load(workdirs: str | os.PathLike | Sequence[str | os.PathLike], kind: str = "metrics"):
    """pandas DataFrame of one table of one or more work directories, with grid and config columns.

    ``kind``: 'metrics' (one row per model and evaluation; with ``wall_s`` and ``model_steps_per_s``
    of the training chunk that ended at that step), 'train' (one row per model and training chunk:
    its mean loss), or 'scores' (the rows of ``launch.score`` / ``notebook.Run.score(write=True)``,
    with ``num_samples`` and ``sampler_steps``). Every row carries its model's grid row (``model``
    is the index in the whole sweep; P, seed, lr, budget_steps, budget_epochs, the traced scalars and
    a column per swept key, e.g. ``m``), the config values of ``CONFIG_COLUMNS`` where the row does
    not carry its own, and ``workdir``. A job-array root (``launch.slurm``) reads as one run.
    """
    import pandas as pd

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {KINDS}")
    workdirs = [workdirs] if isinstance(workdirs, (str, os.PathLike)) else list(workdirs)
    if not workdirs:
        raise ValueError("workdirs must name at least one work directory")
    frames = []
    for workdir in workdirs:
        workdir = str(workdir)
        stored = read_config_json(workdir)
        flat = config_lib.flatten(stored.get("config", {}))
        if kind == "scores":
            rows = score_rows(workdir)
        else:
            rows = workdir_rows(workdir, METRICS_FILE if kind == "metrics" else TRAIN_FILE)
        frame = pd.DataFrame([_renamed(r) for r in rows])
        grid_rows = stored.get("grid")
        grid = pd.DataFrame(grid_rows if isinstance(grid_rows, list) else []).rename(columns={"index": "model"})
        if "model" in grid and "model" in frame:
            extra = ["model"] + [c for c in grid.columns if c not in frame.columns]
            frame = frame.merge(grid[extra], on="model", how="left")
        if kind == "metrics" and "step" in frame:
            timing = pd.DataFrame(workdir_rows(workdir, TRAIN_FILE))
            if len(timing):
                frame = frame.merge(timing[["model", "step", "wall_s", "model_steps_per_s"]], on=["model", "step"],
                                    how="left")
            else:
                frame = frame.assign(wall_s=float("nan"), model_steps_per_s=float("nan"))
        frame["workdir"] = workdir
        for column, key in CONFIG_COLUMNS.items():
            if column not in frame.columns:
                frame[column] = flat.get(key)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _crn_scored(history: Sequence[dict]) -> bool:
    """Whether every evaluation logged ``test_loss_se``: its test loss is then scored with the same noise
    keys and rows at every evaluation (common random numbers), so differences between steps are real."""
    return bool(history) and all(_finite(r.get("test_loss_se")) for r in history)


def _finite(value: Any) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def selection_loss(row: dict, crn: bool = False) -> float:
    """The test loss that picks a model's best evaluation; inf if none.

    ``crn`` (every evaluation of the model logged ``test_loss_se``): ``test_loss`` itself, scored with
    common random numbers. Otherwise (older work directories) the mean over diffusion-time windows,
    stratified in t and so less noisy than a test_loss drawn with fresh keys, else test_loss.
    """
    windows = [] if crn else [v for k, v in row.items() if k.startswith("test_loss_window_") and k[17:].isdigit()]
    values = windows if windows else [row.get("test_loss")]
    if not all(_finite(v) for v in values):
        return math.inf
    return sum(values) / len(values)


def best_position(history: Sequence[dict]) -> int:
    """Position in ``history`` of the best evaluation: lowest ``selection_loss``, earliest step among equals."""
    if not history:
        raise ValueError("history must hold at least one evaluation")
    crn = _crn_scored(history)
    return min(range(len(history)), key=lambda i: (selection_loss(history[i], crn), history[i]["step"]))


def pick(history: Any, at: str = DEFAULT_READING) -> dict:
    """The evaluation of one model that ``at`` reads: 'last', or 'best' (``best_position``).

    ``history``: the model's rows, as dicts or as a pandas DataFrame. The one rule for 'best':
    ``analysis.final`` calls ``best_position`` too, and gives one row per model of a whole table
    (``analysis.final(results.load(workdir), at="best")``); rows of several models are refused here.
    """
    if at not in READINGS:
        raise ValueError(f"at={at!r} must be one of {tuple(READINGS)}")
    rows = history.to_dict("records") if hasattr(history, "to_dict") else list(history)
    if not rows:
        raise ValueError("history must hold at least one evaluation")
    models = sorted({(str(r.get("workdir", "")), r["model"]) for r in rows if "model" in r})
    if len(models) > 1:
        raise ValueError(f"history holds {len(models)} models; pick reads one model's rows: for one row per model"
                         " use analysis.final(df, at=...)")
    rows = sorted(rows, key=lambda r: r["step"])
    if at == "last":
        return rows[-1]
    return rows[best_position(rows)]


def _level_columns(rows: Sequence[dict]) -> list[str]:
    names = {k for r in rows for k in r if k.startswith("validity_l") and k[len("validity_l"):].isdigit()}
    return sorted(names, key=lambda k: int(k[len("validity_l"):]))


def _format(value: Any) -> str:
    if value is None:
        return "nan"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def summary_table(rows_or_df: Any, at: str = DEFAULT_READING, title: bool = True) -> str:
    """Per-model text table at each model's ``at`` evaluation: validity per level, copies (P 'online' and
    copies '-' for a model trained online), and the
    first flag (``nan@``/``loss@``/``collapse@`` step, see ``rhm_jax.health``); a flagged model
    shows no scores. The first line (unless ``title=False``) says which reading it shows.
    """
    rows = rows_or_df.to_dict("records") if hasattr(rows_or_df, "to_dict") else list(rows_or_df)
    if at not in READINGS:
        raise ValueError(f"at={at!r} must be one of {tuple(READINGS)}")
    if not rows:
        return "(no evaluations)"
    rows = [_renamed(r) for r in rows]
    by_model: dict[Any, list[dict]] = {}
    for row in rows:
        by_model.setdefault((row.get("workdir"), row["model"]), []).append(row)
    levels = _level_columns(rows)
    # the swept values that tell models apart besides P and seed (lr, m, grammar_seed, width, ...)
    candidates = dict.fromkeys(["lr", *(c for c in keys.columns() if c not in ("P", "seed"))])
    extra = [k for k in candidates if len({repr(r.get(k)) for r in rows}) > 1]
    header = ["model", "P", "seed", *extra, "step", *[k.replace("validity_", "") for k in levels],
              "copies", "flagged"]
    lines = []
    for (_, model), history in sorted(by_model.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        history = sorted(history, key=lambda r: r["step"])
        shown = pick(history, at)
        flag = health.first_flag(history)  # nan@, loss@ or collapse@ step: no validity is shown
        online = shown.get("P") == 0  # trained online: no training set, so no copies to count
        copies = "-" if online else shown.get("copies")
        scores = [shown.get(k) for k in levels] + [copies] if flag is None else ["-"] * (len(levels) + 1)
        cells = [model, "online" if online else shown.get("P"), shown.get("seed"), *[shown.get(k) for k in extra], shown["step"],
                 *scores, flag or "-"]
        lines.append([_format(c) for c in cells])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    head = [f"each model at {READINGS[at]}:"] if title else []
    return "\n".join(head + [fmt.format(*header)] + [fmt.format(*line) for line in lines])


def write_summary(workdir: str, table: str, footer: str = "") -> None:
    """Write the end-of-run table to ``summary.txt``, then ``footer`` after a blank line when given
    (the runner's: where the wall time went, ``split_line``); untouched when it already holds them."""
    text = table + "\n" + (f"\n{footer}\n" if footer else "")
    path = os.path.join(workdir, SUMMARY_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)
