"""A config file ``path.py[:arg]`` read, with ``--config.section.key=value`` overrides (config_flags syntax).

The schema and its validation are ``rhm_jax.config``; this module only turns files and command
lines into a locked ConfigDict and sweep points (``plan``).
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Sequence

import ml_collections
import numpy as np


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _installed_sweep(path: str) -> str:
    """``sweeps/<exp>.py`` of the installed ``sweeps`` package (run from outside the clone), else ``path``."""
    if os.path.dirname(os.path.normpath(path)) != "sweeps":
        return path
    found = importlib.util.find_spec("sweeps")  # locates the package without importing it
    for folder in (found.submodule_search_locations or []) if found else []:
        candidate = os.path.join(folder, os.path.basename(path))
        if os.path.isfile(candidate):
            return candidate
    return path


def _module(spec: str) -> tuple[Any, str, str]:
    """(module, path, arg) of the config file ``path.py[:arg]``, executed."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        path = _installed_sweep(path)
    if not os.path.isfile(path):
        raise ValueError(f"--config={spec!r}: no config file {path!r} (nor in the installed sweeps package)")
    module_spec = importlib.util.spec_from_file_location(f"rhm_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, path, arg


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Config from ``path.py[:arg]`` plus ``--config.a.b=value`` overrides (config_flags syntax).

    ``sweeps/<exp>.py`` that is not a file here is read from the installed ``sweeps`` package.
    The file's ``get_config(arg)`` (``get_config()`` without an arg) builds the config. Values are
    Python literals (``3e-4``, ``(64,256)``, ``True``); strings may be bare (``masked``). Unknown
    keys, values of the wrong type and malformed overrides raise ValueError.
    """
    module, path, arg = _module(spec)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config={spec!r}: {path} defines no get_config(arg=None)")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    for item in overrides:
        apply_override(config, item)
    return config


def load_sweep(spec: str, overrides: Sequence[str] = ()) -> list[dict]:
    """The sweep points of ``path.py[:arg]``: its ``get_sweep(arg)``, or ``[{}]`` (the config alone).

    An override of a key the sweep sets raises ValueError: the sweep would silently undo it.
    """
    module, path, arg = _module(spec)
    get_sweep = getattr(module, "get_sweep", None)
    if get_sweep is None:
        return [{}]
    points = get_sweep(arg) if arg else get_sweep()
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ValueError(f"--config={spec!r}: get_sweep of {path} must return a list of dicts (sweep points),"
                         f" got {type(points).__name__}")
    for item in overrides:
        name = item[len("--config."):].partition("=")[0] if item.startswith("--config.") else item
        where = next((i for i, point in enumerate(points) if name in point), None)
        if where is not None:
            raise ValueError(f"override {item!r} sets {name}, which the sweep of {path} sets (point {where}:"
                             f" {name}={points[where][name]!r}); change the sweep or pick it with its argument")
    return points


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Set one ``--config.section.key=value`` on a locked config, checking key and type."""
    if not item.startswith("--config.") or "=" not in item:
        raise ValueError(f"override {item!r} must look like --config.section.key=value")
    name, _, text = item[len("--config."):].partition("=")
    path = name.split(".")
    node = config
    for depth, part in enumerate(path):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(path[:depth]) or "<top>"
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else "(not a section)"
            raise ValueError(f"unknown config key {name!r} in {item!r}; keys of {where}: {known}")
        if depth < len(path) - 1:
            node = node[part]
    key = path[-1]
    current = node[key]
    if isinstance(current, ml_collections.ConfigDict):
        raise ValueError(f"override {item!r} names a section; set its keys one by one")
    try:
        node[key] = _parse_value(text, current)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad value in override {item!r} for a {type(current).__name__} field: {err}") from err


def _range(text: str) -> tuple | None:
    """``range(stop)`` / ``range(start, stop[, step])`` with int literals as a tuple; None if not that form."""
    text = text.strip()
    if not (text.startswith("range(") and text.endswith(")")):
        return None
    try:
        args = ast.literal_eval(f"({text[len('range('):-1]},)")
    except (ValueError, SyntaxError):
        args = None
    if not args or len(args) > 3 or not all(_is_int(a) for a in args):
        raise ValueError(f"{text!r}: range takes 1 to 3 integers")
    values = tuple(range(*args))
    if not values:
        raise ValueError(f"{text!r} is empty")
    return values


def _parse_value(text: str, current: Any) -> Any:
    """Text -> value of the field's kind: bools by name, strings as typed, else a Python literal.

    A tuple field takes a tuple or list, a bare value v as ``(v,)`` (as ml_collections' config_flags:
    ``--config.train.seeds=3`` is seed 3), or ``range(...)`` (``range(3)``: seeds 0, 1, 2).
    """
    if isinstance(current, bool):
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise ValueError(f"{text!r} is not a bool (true/false)")
    if isinstance(current, tuple) and (values := _range(text)) is not None:
        return values
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, str) or current is None:
            return text  # a bare word for a string field
        raise ValueError(f"{text!r} is not a Python literal") from None
    if isinstance(current, str) and not isinstance(value, str):
        return text
    if isinstance(current, tuple) and not isinstance(value, (tuple, list)):
        return (value,)
    if isinstance(current, tuple):
        return tuple(value)
    return value
