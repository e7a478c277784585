"""Every sweep config validates (full and quick) without training; the quick P sweep shows the hierarchy."""
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rhm_jax import analysis, thresholds
from rhm_jax import config as config_lib
from rhm_jax import plan, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = ("hierarchy_in_p", "hierarchy_in_time", "masked_transformer", "pilot_cpu", "reproduction_cpu_hour", "online")


def sweep_module(name: str):
    """Import sweeps/<name>.py by path (sweeps/ is a folder of config files, not a package)."""
    spec = importlib.util.spec_from_file_location(f"sweeps_{name}", os.path.join(ROOT, "sweeps", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arg", [None, "quick"])
@pytest.mark.parametrize("name", SWEEPS)
def test_config_validates(name, arg):
    config = sweep_module(name).get_config(arg)
    config_lib.validate(config)
    g = config.grammar
    p_max = g.n * g.m ** ((g.s**g.L - 1) // (g.s - 1))
    assert max(config.data.num_train) + config.data.num_test <= p_max


@pytest.mark.parametrize("arg", [None, "quick"])
@pytest.mark.parametrize("name", SWEEPS)
def test_every_p_sweep_evaluates_at_least_twice_per_octave(name, arg):
    """A threshold read between evaluations one octave apart jumps in factors of 2 (issue 19)."""
    config = sweep_module(name).get_config(arg)
    points = config_lib.load_sweep(os.path.join(ROOT, "sweeps", f"{name}.py") + (f":{arg}" if arg else ""))
    if len(config.data.num_train) > 1 or any("data.num_train" in point for point in points):
        assert config.eval.per_octave >= 2, (name, arg)
        assert all(point.get("eval.per_octave", 2) >= 2 for point in points), (name, arg)
    assert config_lib.base_config().eval.per_octave >= 2


@pytest.mark.parametrize("name", SWEEPS)
def test_docstring_records_launch_time_and_expectation(name):
    doc = sweep_module(name).__doc__
    for word in ("Launch:", "Run time:", "Expected:", f"sweeps/{name}.py", "quick"):
        assert word in doc


@pytest.mark.parametrize("name", SWEEPS)
def test_unknown_argument_raises(name):
    with pytest.raises(ValueError, match="quick"):
        sweep_module(name).get_config("fast")
    if hasattr(sweep_module(name), "get_sweep"):
        with pytest.raises(ValueError, match="quick"):
            sweep_module(name).get_sweep("fast")


@pytest.mark.parametrize("arg", [None, "quick"])
@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_plans_before_any_compilation(name, arg):
    """Every point of every sweep file validates: config.load_sweep (or [{}]) through plan.make_plan."""
    spec = os.path.join(ROOT, "sweeps", f"{name}.py") + (f":{arg}" if arg else "")
    planned = plan.make_plan(config_lib.load(spec), config_lib.load_sweep(spec))
    assert planned.num_models == sum(len(p.rows) for p in planned.programs) > 0


def test_p_sweep_is_two_programs_one_per_m_with_three_realizations():
    """One sweep file: m = 4 and 3 zipped with their P grids, times grammar/data/model seed K = 0, 1, 2."""
    module = sweep_module("hierarchy_in_p")
    planned = plan.make_plan(module.get_config(), module.get_sweep())
    assert [p.settings.grammar.m for p in planned.programs] == [4, 3]
    assert set(planned.swept) == {"grammar.m", "data.num_train", "grammar.seed", "data.seed", "train.seeds"}
    for program in planned.programs:
        rows = program.rows
        assert {(r["grammar_seed"], r["data_seed"], r["seed"]) for r in rows} == {(k, k, k) for k in range(3)}
        # every static setting but m as in get_config (the m=4 program's base)
        base = plan.single(module.get_config()).settings
        assert dataclasses.replace(program.settings, grammar=base.grammar) == base


@pytest.mark.parametrize("arg", [None, "quick"])
def test_p_grid_of_each_m_spans_every_threshold(arg):
    """Full: >= 10 log-spaced P from about v m**2 / 4 to 4 v m**(L+1), the paper's optimizer; quick: P on
    both sides of v m**2 and of v m**3."""
    module = sweep_module("hierarchy_in_p")
    planned = plan.make_plan(module.get_config(arg), module.get_sweep(arg))
    assert len(planned.programs) == 2
    for program in planned.programs:
        g, P = program.settings.grammar, np.array(sorted({r["P"] for r in program.rows}))
        if arg == "quick":
            for level in (1, 2):
                scale = g.v * g.m ** (level + 1)
                assert (P < scale).sum() >= 2 and (P > scale).sum() >= 2
            continue
        assert len(P) >= 10
        np.testing.assert_allclose(np.diff(np.log2(P)), 1.0)  # one per octave
        assert P[0] <= g.v * g.m**2 / 2 and P[-1] >= 2 * g.v * g.m ** (g.L + 1)


def test_quick_p_sweep_is_the_quick_config_plus_a_smaller_m():
    """The quick sweep's first program is get_config('quick') itself (m=3), the second m=2 with P <= 512."""
    module = sweep_module("hierarchy_in_p")
    quick = module.get_config("quick")
    first, second = plan.make_plan(quick, module.get_sweep("quick")).programs
    assert first.settings == plan.single(quick).settings
    assert second.settings.grammar.m == 2 and max(r["P"] for r in second.rows) == 512


@pytest.mark.slow
def test_quick_p_sweep_learns_level_one_before_level_two(tmp_path):
    """Must-show: on the quick grid, the fitted threshold of level 1 lies below that of level 2."""
    from rhm_jax import runner

    workdir = str(tmp_path / "quick")
    runner.run(sweep_module("hierarchy_in_p").get_config("quick"), workdir, progress=False)
    # at each model's lowest test loss: the small-P models end up copying their data (see the docstring)
    table = thresholds.table(analysis.load(workdir), at="best")
    summary = thresholds.summary(table).set_index("level")
    p1, p2 = summary.loc[1, "P_star"], summary.loc[2, "P_star"]
    assert math.isfinite(p1), summary
    # level 2 either crosses 1/2 at a larger P or not at all within the grid
    assert (math.isfinite(p2) and p2 > p1) or summary.loc[2, "censored"] == "above", summary


def test_reproduction_grids_bracket_every_level_of_every_m():
    """The CPU reproduction: per m, >= 2 P on each side of every v m**(l+1), within P_max; three
    realizations (grammar, data and model seed together) of each m; the pilot's network and process."""
    module = sweep_module("reproduction_cpu_hour")
    config = module.get_config()
    runs = plan.make_plan(config, module.get_sweep())
    by_m = {}
    for program in runs.programs:
        for row in program.rows:
            by_m.setdefault(row["m"], []).append(row)
    assert sorted(by_m) == [2, 3]
    g = config.grammar
    for m, rows in by_m.items():
        P = np.array(sorted({r["P"] for r in rows}))
        assert P.max() + config.data.num_test <= g.n * m ** ((g.s**g.L - 1) // (g.s - 1))
        for level in range(1, g.L + 1):
            scale = g.v * m ** (level + 1)
            assert (P < scale).sum() >= 2 and (P > scale).sum() >= 2, (m, level, P)
        seeds = {(r["grammar_seed"], r["data_seed"], r["seed"]) for r in rows}
        assert seeds == {(k, k, k) for k in range(3)}, (m, seeds)
    assert config.network.name == "bpunet" and config.eval.per_octave >= 2


@pytest.mark.slow
def test_reproduce_script_runs_the_sweep_the_learner_and_the_report(tmp_path):
    """launch/reproduce.sh on the quick variant: one work directory with both m, the learner on its
    datasets, the report with the time reading; a second call resumes instead of starting anew."""
    workdir = tmp_path / "run"
    env = dict(os.environ, RUNS=str(workdir), ARG="quick", PYTHON=sys.executable, PYTHONPATH=ROOT)
    for _ in range(2):
        done = subprocess.run(["bash", os.path.join(ROOT, "launch", "reproduce.sh")], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    assert f"resume run in {workdir}" in done.stderr
    assert sorted(analysis.load(str(workdir))["m"].unique()) == [2, 3]
    assert (workdir / "clustering.jsonl").exists()
    report = (workdir / "report" / "report.md").read_text()
    assert "clustering learner" in report and "Levels in time" in report
