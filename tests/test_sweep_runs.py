"""A sweep in one work directory (tests/data/two_programs.py: 2 widths x 2 grammar seeds x 2 data
seeds x 2 P): the rows of separate single-model runs, one compiled training program per static
value, resume after a SIGKILL in the second program, and a job array merged into one table.
"""
import copy
import os
import signal
import time

import pytest

from launch import slurm
from rhm_jax import config as config_lib
from rhm_jax import program, results, runner, train
from test_runner import _launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "tests", "data", "two_programs.py")
KEY = ("width", "grammar_seed", "data_seed", "P", "step")  # a model and step of the sweep, by its settings


def sweep():
    return config_lib.load(SWEEP), config_lib.load_sweep(SWEEP)


def by_settings(rows):
    """{(width, grammar seed, data seed, P, step): row without the model index}."""
    return {tuple(r[k] for k in KEY): {k: v for k, v in r.items() if k != "model"} for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compile_cache):
    """The sweep run once, uninterrupted, counting the training programs traced: (rows, traces, workdir)."""
    traces = []
    real = train.make_train_chunk

    def counting(*args, **kwargs):
        chunk = real(*args, **kwargs)

        def traced(*inner, **inner_kwargs):  # runs once per trace of the jitted chunk
            traces.append(inner[1].P.shape)
            return chunk(*inner, **inner_kwargs)

        traced.steps_per_call = getattr(chunk, "steps_per_call", None)
        return traced

    train.make_train_chunk = counting
    try:
        program.clear_cache()
        config, points = sweep()
        workdir = str(tmp_path_factory.mktemp("sweep") / "run")
        rows = runner.run(config, workdir, points=points, progress=False)
    finally:
        train.make_train_chunk = real
    return rows, traces, workdir


@pytest.mark.slow
def test_a_sweep_gives_the_rows_of_its_single_model_runs_from_one_program_per_static_value(reference, tmp_path):
    rows, traces, _ = reference
    assert len(traces) == 2, traces  # two widths: two training programs, each traced once for its 8 models
    got = by_settings(rows)
    assert len(got) == 16 * 8  # 16 models, evaluated at steps 0, 1, 2, 4, ..., 64
    base, _ = sweep()
    for width in (8, 16):
        for grammar_seed in (0, 1):
            for data_seed in (0, 1):
                for P in (8, 16):
                    config = copy.deepcopy(base)
                    config.network.width, config.grammar.seed, config.data.seed = width, grammar_seed, data_seed
                    config.data.num_train = (P,)
                    alone = runner.run(config, str(tmp_path / f"{width}_{grammar_seed}_{data_seed}_{P}"),
                                       progress=False)
                    # a run without a sweep has no swept columns: its width is its config's
                    for key, row in by_settings([dict(r, width=width) for r in alone]).items():
                        want = got[key]
                        assert sorted(row) == sorted(want), key
                        for name, value in want.items():
                            if isinstance(value, float):  # another grid size may vectorize sums differently
                                assert row[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, name)
                            else:
                                assert row[name] == value, (key, name)


@pytest.mark.heavy
def test_one_work_directory_holds_the_whole_sweep(reference):
    rows, _, workdir = reference
    stored = results.read_config_json(workdir)
    assert stored["points"] == config_lib.load_sweep(SWEEP)
    assert len(stored["grid"]) == 16 and [r["index"] for r in stored["grid"]] == list(range(16))
    table = results.load(workdir)
    assert sorted(set(table["width"])) == [8, 16] and sorted(set(table["grammar_seed"])) == [0, 1]
    assert sorted(set(table["data_seed"])) == [0, 1]
    assert len(table) == len(rows) == 16 * 8
    with open(os.path.join(workdir, results.SUMMARY_FILE)) as f:
        assert len([line for line in f if line.strip()]) >= 16


@pytest.mark.slow
def test_sigkill_in_the_second_program_then_rerun_gives_the_same_rows(reference, tmp_path, compile_cache):
    rows, _, _ = reference
    workdir = str(tmp_path / "run")
    second = runner.part_dir(workdir, 1)  # one sub-grid per program: part 1 is the second program's
    process = _launch(workdir, compile_cache, SWEEP)
    deadline = time.time() + 600
    try:
        while not (os.path.isdir(second) and any(p.isdigit() for p in os.listdir(second))):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "no checkpoint of the second program within 600 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGSTOP)  # frozen at once: the kill lands mid-program however loaded the machine
        assert not os.path.exists(os.path.join(workdir, results.SUMMARY_FILE))
        process.send_signal(signal.SIGKILL)
        process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    restart = _launch(workdir, compile_cache, SWEEP)
    _, err = restart.communicate(timeout=900)
    assert restart.returncode == 0, err[-3000:]
    assert "resuming models 8..15 from the checkpoint at step" in err, err[-3000:]
    again = results.read_rows(os.path.join(workdir, results.METRICS_FILE))
    key = lambda r: (r["model"], r["step"])
    assert sorted(again, key=key) == sorted(rows, key=key)


@pytest.mark.slow
def test_a_job_array_over_two_programs_merges_into_the_single_process_table(reference, tmp_path, monkeypatch,
                                                                           compile_cache):
    _, _, single_dir = reference
    monkeypatch.setenv("PYTHONPATH", ROOT)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", compile_cache)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.chdir(ROOT)
    config, points = sweep()
    root = str(tmp_path / "array")
    slices = slurm.prepare(config, root, 2, points=points)
    assert slices == [0, 1]
    executor = slurm.make_executor("local", os.path.join(root, "submitit"), timeout_min=30)
    jobs = slurm.submit(config, root, slices, 2, executor, points)
    assert slurm.wait(jobs, slices) == []
    drop = ["workdir", "wall_s", "model_steps_per_s"]
    merged, single = (results.load(d).drop(columns=drop, errors="ignore").sort_values(["model", "step"])
                      .reset_index(drop=True) for d in (root, single_dir))
    assert sorted(merged.columns) == sorted(single.columns)
    assert sorted(set(merged["width"])) == [8, 16] and len(merged) == len(single) == 16 * 8
    for column in single.columns:
        left, right = merged[column].to_numpy(), single[column].to_numpy()
        assert all(a == b or (a != a and b != b) for a, b in zip(left, right)), column  # NaN == NaN
