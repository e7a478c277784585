"""Figures people can read: constrained layout, no text drawn over other text at any P range
(titles, axis labels, tick labels), titles that name the swept values and the seeds a panel
averages over, and legends without repeats."""
import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.layout_engine import ConstrainedLayoutEngine

from rhm_jax import figures, report, results
from test_analysis import synthetic_metrics, write_workdir
from test_report import write_lr_seed_m_sweep


def drawn(monkeypatch, workdirs, out):
    """{name: figure} of every figure the report draws (captured instead of saved), drawn once."""
    made = {}

    def capture(fig, out, name):
        FigureCanvasAgg(fig)
        fig.draw_without_rendering()
        made[name] = fig
        return [name]

    monkeypatch.setattr(figures, "_save", capture)
    report.make_report(workdirs, str(out))
    return made


def texts(fig):
    """(what, window extent) of every visible, non-empty text: titles, axis labels, tick labels."""
    renderer = fig.canvas.get_renderer()
    found = []
    if fig._suptitle is not None and fig._suptitle.get_text():
        found.append(("suptitle", fig._suptitle))
    for i, ax in enumerate(fig.axes):
        found += [(f"axes {i} title", t) for t in (ax.title, ax._left_title, ax._right_title)]
        found += [(f"axes {i} xlabel", ax.xaxis.label), (f"axes {i} ylabel", ax.yaxis.label)]
        box = ax.get_window_extent(renderer)
        for axis, lo, hi in ((ax.xaxis, box.x0, box.x1), (ax.yaxis, box.y0, box.y1)):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                label = tick.label1
                where = label.get_window_extent(renderer)
                center = (where.x0 + where.x1) / 2 if axis is ax.xaxis else (where.y0 + where.y1) / 2
                if tick.get_visible() and lo - 1 <= center <= hi + 1:  # drawn ticks only
                    found.append((f"axes {i} tick {label.get_text()!r}", label))
    return [(what, t.get_window_extent(renderer).expanded(1.0, 1.0)) for what, t in found
            if t.get_visible() and t.get_text().strip()]


def collisions(fig):
    """Pairs of texts whose boxes overlap by more than a pixel."""
    hits = []
    for (a, box_a), (b, box_b) in itertools.combinations(texts(fig), 2):
        width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if width > 1 and height > 1:
            hits.append((a, b))
    return hits


def titles(fig) -> str:
    return " ".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes])


@pytest.fixture(scope="module")
def decade(tmp_path_factory):
    """A run whose P spans about a decade (56 ... 576), two model seeds."""
    df = synthetic_metrics(m=3, seeds=(0, 1), num_P=12)
    return write_workdir(tmp_path_factory.mktemp("decade") / "run", df[(df["P"] >= 50) & (df["P"] <= 600)])


@pytest.mark.heavy
def test_no_text_collides_and_layouts_are_constrained_when_p_spans_a_decade(decade, monkeypatch, tmp_path):
    made = drawn(monkeypatch, [decade], tmp_path)
    assert {"validity_vs_P", "collapse", "time", "windows", "coherence"} <= set(made)
    for name, fig in made.items():
        assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine), name
        assert collisions(fig) == [], name
    Ps = sorted(results.load(decade)["P"].unique())
    assert Ps[-1] / Ps[0] < 12  # about a decade: where matplotlib labels the minor ticks 2, 3, 4, ... x 10^k
    ticks = [t.get_text() for t in made["validity_vs_P"].axes[0].get_xticklabels()]
    assert ticks == [str(int(P)) for P in Ps]  # the grid's own P values label the axis, no minor labels
    assert all("mean over seed 0, 1, band = their range" in titles(fig).replace("\n", " ") for fig in made.values())


@pytest.mark.heavy
def test_a_sweep_over_lr_grammar_seed_and_m_names_its_values_in_every_title(monkeypatch, tmp_path):
    workdir = write_lr_seed_m_sweep(tmp_path / "sweep")
    made = drawn(monkeypatch, [workdir], tmp_path / "report")
    for name, fig in made.items():
        assert collisions(fig) == [], name
    per_curve = {name: fig for name, fig in made.items() if name.split("_")[0] in ("time", "windows", "coherence",
                                                                                   "correlation")}
    assert len(per_curve) >= 4 * 3
    for name, fig in per_curve.items():
        m, lr = name.split("_m")[1].split("_lr")
        assert f"sweep m={m} lr={lr}" in titles(fig), (name, titles(fig))
        assert "mean over grammar_seed 0, 1, band = their range" in titles(fig), (name, titles(fig))
    panels = made["validity_vs_P"].axes
    assert len(panels) == 2 * 4 and all("grammar_seed 0, 1" in ax.get_title().replace("\n", " ") for ax in panels)
    legend = [t.get_text() for t in made["collapse"].axes[0].get_legend().get_texts()]
    assert len(legend) == len(set(legend)) and not any("(m=" in t for t in legend), legend
    assert {"sweep m=2 lr=0.0001", "sweep m=3 lr=0.0003", "level 1"} <= set(legend)
