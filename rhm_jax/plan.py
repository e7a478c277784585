"""Sweeps over any config key: the declaration (axes), and the plan (models grouped into programs).

A sweep file defines ``get_sweep(arg=None)`` next to ``get_config`` and returns a list of points,
each a dict {dotted config key: value}, built from axes as in big_vision and md4::

    def get_sweep(arg=None):
        return plan.product(
            plan.zipped(plan.sweep("grammar.m", [3, 4]),
                        plan.sweep("data.num_train", [(32, 64, 128), (64, 128, 256)])),
            plan.sweep("grammar.seed", [0, 1, 2]))

The grid keys (``keys.GRID_KEYS``: data.num_train, train.seeds, train.lr) stay a product inside
each point: an axis value of one of them is that point's tuple (a bare value v means (v,)).
``make_plan`` expands the points into models, validates every point's config and groups the models
into programs (one per distinct combination of static values, in order of first appearance), all
without jax computations, before anything compiles. It is the last reader of a ConfigDict: each
planned program carries typed, frozen ``settings.Settings`` and its grid rows (built here once,
with ROW_FIELDS). Shape letters: none (no arrays here).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from typing import Any, Sequence

import ml_collections
import numpy as np

from rhm_jax import config as config_lib
from rhm_jax import keys, settings, train

# config.json records every model's grid row (about 300 bytes) and launch/ prints one summary line
# per model: 2**14 models make a 5 MB config.json and, at the paper's W=1024 budget of 2**18 steps,
# weeks of one GPU. A larger count is far more likely an axis multiplied by mistake than an
# experiment; split such a sweep into several work directories.
MAX_MODELS = 2**14
# Grid-row fields every model carries (the lead's metrics rows and config.json's "grid" hold them);
# a swept key whose column is not among them adds its own entry.
ROW_FIELDS = ("index", "P", "seed", "lr", "grammar_seed", "data_seed", "budget_steps", "budget_epochs",
              "warmup_steps", "b1", "b2", "adam_eps")
_STATIC = frozenset(keys.of_kind("static"))


# ----------------------------------------------------------------------------- declaration

def _known(key: str) -> None:
    """Raise ValueError when ``key`` cannot be a sweep axis: unknown, or an execution key."""
    if not isinstance(key, str) or key not in keys.KEYS:
        close = difflib.get_close_matches(str(key), list(keys.KEYS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; the keys are listed in rhm_jax/keys.py"
        raise ValueError(f"unknown config key {key!r} as a sweep axis{hint}")
    if keys.KEYS[key].kind in keys.RESUMABLE:
        article = "an" if keys.KEYS[key].kind == "execution" else "a"
        raise ValueError(f"{key} is {article} {keys.KEYS[key].kind} key (how a run executes, not what it"
                         " computes): set it in the config or with --config, not as a sweep axis")


def _json_ready(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python: the point as config.json stores it."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def sweep(key: str, values: Sequence) -> list[dict]:
    """One axis: a point per value of ``key``."""
    _known(key)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"sweep axis {key!r}: values must be a list, got {values!r}")
    if len(values) == 0:
        raise ValueError(f"sweep axis {key!r} is empty: give it at least one value")
    return [{key: _json_ready(v)} for v in values]


def _axis_keys(axis: list[dict], where: str) -> list[str]:
    if not isinstance(axis, list) or not all(isinstance(p, dict) for p in axis):
        raise ValueError(f"{where}: every axis must be a list of dicts (use plan.sweep), got {axis!r:.80}")
    if not axis:
        raise ValueError(f"{where}: an axis is empty")
    return list(dict.fromkeys(k for p in axis for k in p))


def _disjoint(axes: Sequence[list[dict]], where: str) -> None:
    """A key in two axes would have two values at once: refused, naming the key."""
    seen: dict[str, int] = {}
    for i, axis in enumerate(axes):
        for key in _axis_keys(axis, where):
            if key in seen:
                raise ValueError(f"{where}: {key} is swept twice (axes {seen[key]} and {i}); sweep each key"
                                 " in one axis")
            seen[key] = i


def product(*axes: list[dict]) -> list[dict]:
    """Every combination of the axes' points, the first axis outermost."""
    _disjoint(axes, "plan.product")
    points = [{}]
    for axis in axes:
        points = [{**a, **b} for a in points for b in axis]
    return points


def zipped(*axes: list[dict]) -> list[dict]:
    """The axes' points side by side (values that go together, e.g. m and its P grid)."""
    _disjoint(axes, "plan.zipped")
    lengths = [len(axis) for axis in axes]
    if len(set(lengths)) > 1:
        named = ", ".join(f"{'/'.join(_axis_keys(a, 'plan.zipped'))}: {n}" for a, n in zip(axes, lengths))
        raise ValueError(f"plan.zipped: axes of different lengths ({named}); zipped axes pair their values one"
                         " to one")
    return [{k: v for p in group for k, v in p.items()} for group in zip(*axes)]


# ----------------------------------------------------------------------------- plan

@dataclasses.dataclass(frozen=True)
class Program:
    """A planned program: models that share every static value (``program.build`` compiles it)."""
    index: int  # in run order over the whole sweep (a grid slice keeps the indices)
    settings: settings.Settings  # typed, read from base + static values + its first point's values
    rows: tuple[dict, ...]  # its models' grid rows (ROW_FIELDS and swept columns), consecutive global indices


@dataclasses.dataclass(frozen=True)
class Plan:
    """A sweep expanded: its points, the keys that vary, its programs and model count."""
    points: tuple[dict, ...]  # as declared, JSON-ready
    swept: tuple[str, ...]  # keys whose value differs between points, in order of first appearance
    programs: tuple[Program, ...]  # those with models in run.grid_slice
    num_models: int  # of the whole sweep, before slicing


def _describe(index: int, point: dict) -> str:
    pairs = ", ".join(f"{k}={v!r}" for k, v in point.items())
    return f"sweep point {index} ({pairs or 'the config alone'})"


def _config_value(key: str, value: Any) -> Any:
    """The value as the config holds it: grid keys as tuples (a bare value v is (v,)), lists as tuples."""
    if key in keys.GRID_KEYS and not isinstance(value, (list, tuple)):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    section, name = key.split(".")
    return config[section][name]


def _set(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    section, name = key.split(".")
    try:
        config[section][name] = value
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {key}={value!r} has the wrong type for this key ({err})") from None


def budget_steps(config: ml_collections.ConfigDict, P: int) -> int:
    """Step budget of a model with P examples: num_steps, or ceil(num_epochs * P / rows per step).

    ``config``: validated (exactly one of train.num_steps and train.num_epochs is > 0).
    """
    t = config.train
    num_epochs, num_steps = t.num_epochs, int(t.num_steps)
    batch = train.rows_per_step(P, int(t.batch_size), t.p_below_batch == "full_batch")
    if num_epochs > 0:  # epochs win when both are set: the paper counts time in epochs
        if float(num_epochs).is_integer():
            steps = -(-int(num_epochs) * P // batch)  # exact integer ceil
        else:
            steps = math.ceil(num_epochs * P / batch)
    else:
        steps = num_steps
    if not 0 <= steps < 2**31:  # a derived bound (epochs x P), which validate cannot see per P
        raise ValueError(f"budget of {steps} steps for P={P} must lie in [0, 2**31)")
    return steps


def _models(config: ml_collections.ConfigDict) -> list[dict]:
    """Grid rows (index unset) of one validated point: P outermost, then model seeds, then lr.

    The fields are ROW_FIELDS (the grid rows of ``docs/architecture.md``).
    """
    t = config.train
    batch, full = int(t.batch_size), t.p_below_batch == "full_batch"
    grammar_seed, data_seed = int(config.grammar.seed), int(config.data.seed)
    rows = []
    for P in (int(p) for p in config.data.num_train):
        steps = budget_steps(config, P)
        per_step = train.rows_per_step(P, batch, full)
        for seed in t.seeds:
            for lr in t.lr:
                rows.append(dict(index=None, P=P, seed=int(seed), lr=float(lr), grammar_seed=grammar_seed,
                                 data_seed=data_seed, budget_steps=steps,
                                 budget_epochs=steps * per_step / P if P else None,  # P = 0: online, no epochs
                                 warmup_steps=int(t.warmup_steps), b1=float(t.b1), b2=float(t.b2),
                                 adam_eps=float(t.adam_eps)))
    return rows


def slice_bounds(spec: str, num_models: int) -> tuple[int, int]:
    """[start, stop) of run.grid_slice 'k/K' of M models: K consecutive, balanced slices ('' = all)."""
    if spec == "":
        return 0, num_models
    k, K = (int(part) for part in spec.split("/"))  # syntax checked by config.validate
    if K > num_models:
        raise ValueError(f"run.grid_slice={spec!r} needs K <= {num_models}, the sweep's model count")
    return k * num_models // K, (k + 1) * num_models // K


def _refuse_overlap(values: dict, rows: list[dict], i: int, points: list[dict], reached: dict) -> None:
    """ValueError naming both points when a model of point ``i`` was reached before (same model twice).

    A model is its point's swept values but the grid keys, then its own P, seed and lr;
    ``reached`` maps each model seen so far to the point that reached it.
    """
    fixed = tuple((k, _hashable(v)) for k, v in values.items() if k not in keys.GRID_KEYS)
    for row in rows:
        model = (fixed, row["P"], row["seed"], row["lr"])
        other = reached.setdefault(model, i)
        if other != i:
            raise ValueError(f"{_describe(i, points[i])} reaches a model of {_describe(other, points[other])} again"
                             f" (P={row['P']}, seed={row['seed']}, lr={row['lr']:g}): the same model twice;"
                             " make the points disjoint")


def make_plan(config: ml_collections.ConfigDict, points: Sequence[dict]) -> Plan:
    """Validate every point of the sweep and group its models into programs (no compilation).

    Raises ValueError naming the point and key for: an unknown or execution key, a value of the
    wrong type, a point whose own config is invalid (``config.validate``), a point that repeats
    another, more than MAX_MODELS models, and a run.grid_slice with more slices than models.
    """
    points = [dict(p) for p in points]
    if not points:
        raise ValueError("the sweep has no points (an empty list); [{}] is the config alone")
    swept_keys = list(dict.fromkeys(k for p in points for k in p))
    for i, point in enumerate(points):
        for key in point:
            try:
                _known(key)
            except ValueError as err:
                raise ValueError(f"{_describe(i, point)}: {err}") from None
    work = copy.deepcopy(config)
    base = {k: _get(config, k) for k in swept_keys}
    groups: dict[tuple, list[int]] = {}
    per_point, seen, total, first, reached = [], {k: set() for k in swept_keys}, 0, {}, {}
    for i, point in enumerate(points):
        where = _describe(i, point)
        values = {k: _config_value(k, point[k]) if k in point else base[k] for k in swept_keys}
        same = first.setdefault(tuple(_hashable(v) for v in values.values()), i)
        if same != i:
            raise ValueError(f"{where} repeats {_describe(same, points[same])}: its models would be duplicates")
        for key, value in values.items():
            _set(work, key, value, where)
            seen[key].add(_hashable(value))
        try:
            process = config_lib.validate(work)
        except ValueError as err:
            if points == [{}]:
                raise  # the config alone: config.validate's own words
            raise ValueError(f"{where}: {err}") from None
        count = len(work.data.num_train) * len(work.train.seeds) * len(work.train.lr)
        total += count
        if total > MAX_MODELS:
            raise ValueError(f"{where}: the sweep reaches {total} models by this point (data.num_train x"
                             f" train.seeds x train.lr per point); the limit plan.MAX_MODELS is {MAX_MODELS}:"
                             " split the sweep into several work directories")
        rows = _models(work)
        _refuse_overlap(values, rows, i, points, reached)
        per_point.append((values, rows, settings.of(work, process)))
        static = tuple((k, _hashable(v)) for k, v in values.items() if k in _STATIC)
        groups.setdefault(static, []).append(i)
    swept = tuple(k for k in swept_keys if len(seen[k]) > 1)
    for values, rows, _ in per_point:  # every swept key gets its column, also at points that leave it at base
        for row in rows:
            row.update({keys.KEYS[k].column: _json_ready(values[k]) for k in swept
                        if keys.KEYS[k].column not in ROW_FIELDS})
    start, stop = slice_bounds(config.run.grid_slice, total)
    programs, index = [], 0
    for number, members in enumerate(groups.values()):
        rows = []
        for i in members:
            for row in per_point[i][1]:
                row["index"] = index
                index += 1
                if start <= row["index"] < stop:
                    rows.append(row)
        if rows:
            programs.append(Program(number, per_point[members[0]][2], tuple(rows)))
    return Plan(tuple(_json_ready(p) for p in points), swept, tuple(programs), total)


def single(config: ml_collections.ConfigDict) -> Program:
    """The one program of a config alone (no sweep), its rows sliced by run.grid_slice."""
    return make_plan(config, [{}]).programs[0]


def make_grid(config: ml_collections.ConfigDict) -> tuple[train.Grid, list[dict]]:
    """(traced grid, grid rows) of a config alone: ``train.grid_arrays`` of ``single(config).rows``."""
    rows = list(single(config).rows)
    return train.grid_arrays(rows), rows
