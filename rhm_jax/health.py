"""Divergence beyond NaN: flags on evaluation rows for models that blew up without going non-finite.

A non-finite loss or gradient freezes a model (``diverged``, set by the trainer). Two more flags
are computed from the rows themselves, deterministically, so a resumed run writes the same ones:
- ``loss_blowup``: the train loss (an online model's test loss: it has no training rows) rose above ``LOSS_RISE`` times the model's lowest train loss
  at its earlier evaluations, and by more than ``LOSS_FLOOR`` of its first one (noise near zero
  loss is not a blow-up). Measured: Adam at lr=100 on the smoke grid goes from 0.064 to 0.26-0.30.
- ``collapsed``: the samples hold fewer distinct sequences than ``DISTINCT_SHARE`` of what N
  draws from the model's own P training rows would give (a pure copier), so memorizing a small
  training set is not a collapse (an online model, P = 0, against N distinct). Measured at lr=100: 2-4 distinct of 64 samples (duplicates
  0.94-0.98, rule coverage 0.12-0.25) against about 16 for a copier of P=16.
A model flagged at any evaluation is flagged (``flagged_models``): its validity is not a result.
Imports nothing of the package.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

LOSS_RISE = 2.0
LOSS_FLOOR = 0.1
DISTINCT_SHARE = 0.5
FLAG_COLUMNS = ("diverged", "loss_blowup", "collapsed")


def expected_distinct(num_samples: int, P: int) -> float:
    """Expected distinct rows among ``num_samples`` uniform draws (with replacement) from P rows."""
    return P * -math.expm1(num_samples * math.log1p(-1.0 / P)) if P > 1 else 1.0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _loss(row: dict) -> float | None:
    """The loss a row's blow-up is judged on: its train loss, or its test loss for an online model
    (P = 0: no training rows, its train loss is null)."""
    loss = _number(row.get("train_loss"))
    return _number(row.get("test_loss")) if loss is None and row.get("P") == 0 else loss


class Tracker:
    """Per-model loss history (first and lowest train loss) that turns rows into flagged rows."""

    def __init__(self, num_samples: int, earlier: Iterable[dict] = ()):
        self.num_samples = int(num_samples)
        self.first: dict[int, float] = {}
        self.lowest: dict[int, float] = {}
        for row in sorted(earlier, key=lambda r: r["step"]):
            self._remember(row)

    def _remember(self, row: dict) -> None:
        loss = _loss(row)
        if loss is not None:
            model = int(row["model"])
            self.first.setdefault(model, loss)
            self.lowest[model] = min(loss, self.lowest.get(model, loss))

    def flag(self, rows: Iterable[dict]) -> list[dict]:
        """The rows (one evaluation) with ``loss_blowup`` and ``collapsed`` added; then remembered."""
        out = []
        for row in rows:
            model, loss = int(row["model"]), _loss(row)
            lowest, first = self.lowest.get(model), self.first.get(model)
            blowup = (loss is not None and lowest is not None and loss > LOSS_RISE * lowest
                      and loss - lowest > LOSS_FLOOR * first)
            duplicates = _number(row.get("duplicates"))
            distinct = None if duplicates is None else self.num_samples * (1.0 - duplicates)
            P = int(row["P"])  # 0: online, no training set; a faithful generator repeats (almost) nothing
            expected = expected_distinct(self.num_samples, P) if P > 0 else float(self.num_samples)
            collapsed = distinct is not None and distinct < DISTINCT_SHARE * expected
            out.append(dict(row, loss_blowup=bool(blowup), collapsed=bool(collapsed)))
        for row in out:
            self._remember(row)
        return out


def reason(row: dict) -> str | None:
    """'nan@<step>', 'loss@<step>' or 'collapse@<step>' for a flagged row, else None."""
    if row.get("diverged"):
        return f"nan@{row.get('diverged_step', row.get('step'))}"
    if row.get("loss_blowup"):
        return f"loss@{row.get('step')}"
    if row.get("collapsed"):
        return f"collapse@{row.get('step')}"
    return None


def first_flag(history: Iterable[dict]) -> str | None:
    """'nan@<diverged_step>' if the model ever went non-finite, else the reason of its first flagged
    evaluation (by step), or None if it is healthy."""
    history = sorted(history, key=lambda r: r["step"])
    nan = [reason(r) for r in history if r.get("diverged")]
    if nan:
        return nan[0]
    return next((why for why in map(reason, history) if why), None)
