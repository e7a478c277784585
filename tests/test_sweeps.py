"""Every sweep config validates (full and quick) without training; the quick P sweep shows the hierarchy."""
import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rhm_jax import analysis
from rhm_jax import config as config_lib
from rhm_jax import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = ("hierarchy_in_p", "hierarchy_in_p_m3", "hierarchy_in_time", "masked_transformer", "reproduction_cpu")


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


@pytest.mark.parametrize("name", SWEEPS)
def test_docstring_records_launch_time_and_expectation(name):
    doc = sweep_module(name).__doc__
    for word in ("Launch:", "Run time:", "Expected:", f"sweeps/{name}.py", "quick"):
        assert word in doc


@pytest.mark.parametrize("name", SWEEPS)
def test_unknown_argument_raises(name):
    with pytest.raises(ValueError, match="quick"):
        sweep_module(name).get_config("fast")


@pytest.mark.parametrize("name", ["hierarchy_in_p", "hierarchy_in_p_m3"])
def test_p_grid_spans_every_threshold(name):
    """>= 10 log-spaced P from about v m**2 / 4 to 4 v m**(L+1); the paper's optimizer."""
    config = sweep_module(name).get_config()
    g, P = config.grammar, np.array(sorted(config.data.num_train))
    assert len(P) >= 10
    np.testing.assert_allclose(np.diff(np.log2(P)), 1.0)  # one per octave
    assert P[0] <= g.v * g.m**2 / 2 and P[-1] >= 2 * g.v * g.m ** (g.L + 1)
    assert config.train.batch_size == 64 and tuple(config.train.lr) == (1e-4,)
    assert len(config.train.seeds) == 3
    assert config.process.name == "uniform" and config.network.name == "bpunet"


@pytest.mark.parametrize("name", ["hierarchy_in_p", "hierarchy_in_p_m3"])
def test_quick_grid_brackets_levels_one_and_two(name):
    """The quick grid has P values on both sides of v m**2 and of v m**3."""
    config = sweep_module(name).get_config("quick")
    g, P = config.grammar, np.array(config.data.num_train)
    for level in (1, 2):
        scale = g.v * g.m ** (level + 1)
        assert (P < scale).sum() >= 2 and (P > scale).sum() >= 2


def test_time_sweep_matches_paper_setting():
    config = sweep_module("hierarchy_in_time").get_config()
    g = config.grammar
    assert (g.v, g.n, g.m, g.s, g.L) == (8, 8, 3, 2, 3)
    assert tuple(config.data.num_train) == (1024,) and config.network.width == 1024
    assert config.train.num_epochs == 1e4 and config.eval.per_octave == 4 and len(config.train.seeds) > 1


def test_m3_companion_differs_from_main_sweep_only_in_m_and_grid():
    main, m3 = sweep_module("hierarchy_in_p").get_config(), sweep_module("hierarchy_in_p_m3").get_config()
    diff = config_lib.differences(config_lib.to_dict(main), config_lib.to_dict(m3))
    assert set(diff) == {"grammar.m", "data.num_train"}
    assert m3.grammar.m == 3


@pytest.mark.slow
def test_quick_p_sweep_learns_level_one_before_level_two(tmp_path):
    """Must-show: on the quick grid, the fitted threshold of level 1 lies below that of level 2."""
    from rhm_jax import runner

    workdir = str(tmp_path / "quick")
    runner.run(sweep_module("hierarchy_in_p").get_config("quick"), workdir, progress=False)
    # at each model's lowest test loss: the small-P models end up copying their data (see the docstring)
    table = analysis.thresholds(analysis.load(workdir), at="best")
    summary = analysis.threshold_summary(table).set_index("level")
    p1, p2 = summary.loc[1, "P_star"], summary.loc[2, "P_star"]
    assert math.isfinite(p1), summary
    # level 2 either crosses 1/2 at a larger P or not at all within the grid
    assert (math.isfinite(p2) and p2 > p1) or summary.loc[2, "censored"] == "above", summary


def test_reproduction_grid_brackets_every_level_with_the_papers_process():
    """CPU reproduction: >= 2 P on each side of every v m**(l+1); T=200 and the paper's betas, Adam, batch 64."""
    config = sweep_module("reproduction_cpu").get_config("seed=1")
    g, P = config.grammar, np.array(config.data.num_train)
    for level in range(1, g.L + 1):
        scale = g.v * g.m ** (level + 1)
        assert (P < scale).sum() >= 2 and (P > scale).sum() >= 2, (level, P)
    paper = config_lib.base_config()
    assert config.process == paper.process and config.train.batch_size == 64
    assert config.network.name == "bpunet" and config.network.width < paper.network.width


def test_reproduction_seed_argument_changes_only_the_seeds():
    """'seed=K' is one grammar (and its data, model and evaluation seeds); the grid is otherwise fixed."""
    module = sweep_module("reproduction_cpu")
    zero, two = (config_lib.to_dict(module.get_config(a)) for a in ("seed=0", "seed=2"))
    assert set(config_lib.differences(zero, two)) == {"grammar.seed", "data.seed", "train.seeds", "run.seed"}
    assert module.get_config("seed=2,quick").grammar.seed == 2
    assert config_lib.to_dict(module.get_config()) == zero
    for bad in ("seed=", "seed=-1", "seed=one"):
        with pytest.raises(ValueError, match="seed=K"):
            module.get_config(bad)


@pytest.mark.slow
def test_reproduce_script_runs_seeds_learner_and_one_report(tmp_path):
    """launch/reproduce.sh on the quick variant: a work directory per grammar seed, the learner in each,
    one report over all; a second call resumes the finished seed and adds the next."""
    for seeds in ("0", "0 1"):
        env = dict(os.environ, RUNS=str(tmp_path), SEEDS=seeds, ARG="quick", PYTHON=sys.executable,
                   PYTHONPATH=ROOT)
        done = subprocess.run(["bash", os.path.join(ROOT, "launch", "reproduce.sh")], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    assert f"resume run in {tmp_path / 'seed0'}" in done.stderr  # seed 0 picked up, not started anew
    for k in (0, 1):
        workdir = str(tmp_path / f"seed{k}")
        assert results.read_config_json(workdir)["config"]["grammar"]["seed"] == k
        assert len(analysis.load(workdir)) > 0
        assert (tmp_path / f"seed{k}" / "clustering.jsonl").exists()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "seed0" in report and "seed1" in report and "clustering learner" in report
