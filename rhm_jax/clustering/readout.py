"""The learner on a sweep's datasets, its stored rows and its thresholds on normalized curves."""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from rhm_jax import plan, program, results, settings, theory
from rhm_jax.clustering.learner import CONTEXTS
from rhm_jax.clustering.measure import chance_accuracy, run_grid
from rhm_jax.grammar import Grammar

log = logging.getLogger(__name__)

READING = ("Clustering learner (`rhm_jax.clustering`, no network, `python -m launch.cluster`): on the same "
           "training rows, s-tuples are clustered level by level by the distribution of their sibling blocks' "
           "tokens (or labels), and sequences are generated from the learned grammar. Beside the networks' "
           "validity it shows its own **validity** (label '... validity'): P* is where the normalized validity "
           "(V_l - V_l^unif) / (1 - V_l^unif) of its samples last rises through 1/2, the networks' reading; "
           "mean over learner seeds. Level map: its validity_l needs only levels 1..l-1 clustered, so it "
           "tracks its accuracy_(l-1) and the theory's v m^l (`theory`), one level below the v m^(l+1) "
           "set beside the networks' validity_l.")
ACCURACY_READING = ("Clustering learner's **accuracy** (label '... accuracy', not validity, not drawn on the P "
                    "figure): A_l is the share of level-l subtrees whose learned class matches their true "
                    "symbol (classes matched by mutual majority, exact from the rules), A_l^rand that of random "
                    "labels; P* is where (A_l - A_l^rand) / (1 - A_l^rand) last rises through 1/2, mean over "
                    "learner seeds. accuracy_l is the theory's level-l clustering, `theory` = v m^(l+1); it "
                    "shows in the learner's samples as validity_(l+1).")
QUANTITIES = ("accuracy", "validity", "validity_novel")
_CURVE_KEYS = ("v", "n", "m", "s", "L", "grammar_seed", "data_seed", "context")  # one learner curve


def sweep_data(config: Any) -> tuple[Grammar, np.ndarray]:
    """The grammar and training pool (Q, D) of a config alone (its only dataset), drawn by ``program.draw``."""
    planned = plan.single(config)
    row = planned.rows[0]
    rules, pool_QxD, _ = program.draw(planned.settings.grammar, row["grammar_seed"], row["data_seed"],
                                      max(r["P"] for r in planned.rows), planned.settings.num_test)
    return rules, pool_QxD


def run_sweep(config: Any, context: str = "tokens", restarts: int = 32, iterations: int = 30,
              points: Sequence[dict] | None = None) -> list[dict]:
    """One row per dataset, P and model seed of the sweep (``points``: ``plan``; default the config
    alone): the learner on exactly that model's P training rows (its grammar seed, data seed and pool).
    Online models (P = 0) have no training rows and get no row."""
    # The learner reads only the data: programs that differ in other settings (width, process, ...)
    # share their datasets, and each dataset is learned once.
    datasets: dict[tuple, tuple[Any, list[dict]]] = {}
    for planned in plan.make_plan(config, [{}] if points is None else points).programs:  # validates every point
        typed = planned.settings
        for r in (r for r in planned.rows if r["P"] > 0):  # an online model (P = 0) has no training rows to learn
            key = (typed.grammar, typed.num_test, typed.eval.num_samples, r["grammar_seed"], r["data_seed"])
            datasets.setdefault(key, (typed, []))[1].append(r)
    rows = []
    for number, (key, (typed, models)) in enumerate(datasets.items(), 1):
        began = time.monotonic()
        rows += _learner_rows(typed, key[-2], key[-1], models, context, restarts, iterations)
        log.info("clustering learner: dataset %d of %d (m=%d, grammar seed %d, data seed %d, %d learners) in %.0f s",
                 number, len(datasets), typed.grammar.m, key[-2], key[-1], len({(r["P"], r["seed"]) for r in models}),
                 time.monotonic() - began)
    return rows


def _learner_rows(typed: settings.Settings, grammar_seed: int, data_seed: int, models: Sequence[dict],
                  context: str, restarts: int, iterations: int) -> list[dict]:
    """The learner's rows of one dataset of a program, one per (P, model seed) of its ``models``."""
    g = typed.grammar
    rules, pool_QxD, _ = program.draw(g, grammar_seed, data_seed, max(r["P"] for r in models), typed.num_test)
    pairs = sorted({(r["P"], r["seed"]) for r in models})
    P_M = np.asarray([p for p, _ in pairs], np.int32)
    seed_M = np.asarray([seed for _, seed in pairs], np.uint32)
    out = jax.device_get(run_grid(rules, pool_QxD, P_M, seed_M, typed.eval.num_samples, restarts,
                                  iterations, context))
    chance = np.asarray(chance_accuracy(rules, jax.random.key(0)))
    rows = []
    for i, (P, seed) in enumerate(pairs):
        row = dict(learner="clustering", context=context, P=P, seed=seed, v=g.v, n=g.n, m=g.m, s=g.s, L=g.L,
                   grammar_seed=grammar_seed, data_seed=data_seed)
        for level in range(1, g.L):
            row[f"accuracy_l{level}"] = float(out["accuracy"][i, level - 1])
            row[f"accuracy_chance_l{level}"] = float(chance[level - 1])
        for level in range(1, g.L + 1):
            row[f"validity_l{level}"] = float(out["validity"][i, level - 1])
            row[f"validity_novel_l{level}"] = float(out["validity_novel"][i, level - 1])
        row["valid"], row["copies"] = float(out["valid"][i]), float(out["copy"][i])
        rows.append(row)
    return rows


def path(workdir: str, context: str = "tokens") -> str:
    """Where ``launch.cluster`` keeps the learner's rows: clustering.jsonl (clustering_labels.jsonl)."""
    return os.path.join(workdir, "clustering.jsonl" if context == "tokens" else f"clustering_{context}.jsonl")


def load(workdir: str, context: str = "tokens") -> list[dict]:
    """The learner's rows stored in a work directory ([] when there are none)."""
    return results.read_rows(path(workdir, context))


def normalized(rows: Sequence[dict], quantity: str, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(P values, mean over seeds of the normalized ``quantity``_l<level>) from learner rows.

    ``quantity`` is 'accuracy' (chance: ``accuracy_chance_l<level>``) or a validity column prefix,
    'validity' or 'validity_novel' (chance: ``theory.uniform_validity``). NaN entries (a learner
    whose samples were all copies has no ``validity_novel``) are left out of the mean.
    """
    first = rows[0]
    if quantity in ("validity", "validity_novel"):
        base = theory.uniform_validity(first["v"], first["m"], first["s"], first["L"], first["n"])[level - 1]
    elif quantity == "accuracy":
        base = first[f"accuracy_chance_l{level}"]
    else:
        raise ValueError(f"quantity must be 'accuracy', 'validity' or 'validity_novel', got {quantity!r}")
    P_K = np.array(sorted({r["P"] for r in rows}), float)
    raw_K = np.array([_finite_mean([r[f"{quantity}_l{level}"] for r in rows if r["P"] == P]) for P in P_K])
    return P_K, (raw_K - base) / (1.0 - base)


def _finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values, NaN when there are none."""
    finite = [x for x in values if np.isfinite(x)]
    return float(np.mean(finite)) if finite else float("nan")


def crossing(P_K: np.ndarray, y_K: np.ndarray) -> tuple[float, str]:
    """(P*, censored): the last rise of y through 1/2 (y >= 1/2 at every larger P), linear in log P.

    The last rise, not the first: at small P the learned grammar holds few tuples and regenerates
    near-copies of its data, whose validity is high without any clustering (a bump at small P).
    censored: 'one P', 'above' (y < 1/2 at the largest P), 'below' (y >= 1/2 everywhere); P* is
    then NaN.
    """
    ok = np.isfinite(y_K)
    P_K, y_K = np.asarray(P_K, float)[ok], np.asarray(y_K, float)[ok]
    if P_K.size < 2:
        return float("nan"), "one P"
    if y_K[-1] < 0.5:
        return float("nan"), "above"
    below = np.flatnonzero(y_K < 0.5)
    if below.size == 0:
        return float("nan"), "below"
    i = below[-1]
    x0, x1, y0, y1 = np.log10(P_K[i]), np.log10(P_K[i + 1]), y_K[i], y_K[i + 1]
    return float(10 ** (x0 + (0.5 - y0) / (y1 - y0) * (x1 - x0))), ""


def clustered_level(quantity: str, level: int) -> int:
    """The learner's clustered level that decides its ``quantity``_l<level>: l for accuracy, l-1 for validity.

    A generated level-l node is an observed level-l code (an s-tuple of level-(l-1) labels) whose
    labels are expanded into observed member codes: it is valid once the level-(l-1) clusters (and
    those below) are pure, whatever the level-l clustering, so validity_l tracks accuracy_(l-1).
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    return level if quantity == "accuracy" else level - 1


def thresholds(rows: Sequence[dict], quantities: Sequence[str] = ("accuracy", "validity_novel")) -> list[dict]:
    """P* of the learner per quantity ('accuracy', 'validity', 'validity_novel') and level, on normalized curves.

    Each dict: ``quantity``, ``level``, ``P_star``, ``censored``, ``clustered`` (the clustered
    level that decides the reading, ``clustered_level``) and ``theory`` = v m**(clustered+1): v
    m**(l+1) for accuracy_l, v m**l for validity_l (see the package docstring's level map).
    """
    if not rows:
        raise ValueError("thresholds needs learner rows; got none")
    for quantity in quantities:
        clustered_level(quantity, 1)
    curves = {tuple(r.get(k) for k in _CURVE_KEYS) for r in rows}
    if len(curves) > 1:
        raise ValueError(f"thresholds needs the rows of one grammar, data seed and context; got {len(curves)}")
    first = rows[0]
    out = []
    for quantity in quantities:
        for level in range(1, first["L"] if quantity == "accuracy" else first["L"] + 1):
            P_star, censored = crossing(*normalized(rows, quantity, level))
            clustered = clustered_level(quantity, level)
            out.append(dict(learner="clustering", quantity=quantity, level=level, P_star=P_star,
                            censored=censored, clustered=clustered,
                            theory=theory.sample_complexity(first["v"], first["m"], clustered)))
    return out


def report_thresholds(workdirs: Sequence[str], quantity: str = "validity") -> list[dict]:
    """The learner's thresholds of one ``quantity`` stored in each work directory (``launch.cluster``),
    as rows (label, quantity, level, P_star, censored, clustered, theory, workdir, ...) for
    ``report.make_report(extra_thresholds=...)``.

    'validity' (default) sits beside the networks' validity on the P figure, like for like;
    'accuracy' is the learner's clustering readout, a different quantity (``ACCURACY_READING``).
    The label names the quantity: 'clustering learner (tokens) validity'.
    """
    clustered_level(quantity, 1)
    out = []
    for workdir in workdirs:
        for context in CONTEXTS:
            for where, rows in curves(load(str(workdir), context)):
                out += [dict(label=f"clustering learner ({context}) {quantity}", quantity=quantity,
                             level=t["level"], P_star=t["P_star"], censored=t["censored"],
                             clustered=t["clustered"], theory=t["theory"], workdir=str(workdir), **where)
                        for t in thresholds(rows, (quantity,))]
    return out


def curves(rows: Sequence[dict]) -> list[tuple[dict, list[dict]]]:
    """The learner's rows split into curves (a sweep's rows hold one per grammar and dataset): a
    list of ({v, n, m, s, L, grammar_seed, data_seed}, rows), in order of first appearance."""
    split: dict[tuple, list[dict]] = {}
    for row in rows:
        split.setdefault(tuple(row.get(k) for k in _CURVE_KEYS), []).append(row)
    return [({k: v for k, v in zip(_CURVE_KEYS, key) if k != "context"}, part) for key, part in split.items()]
