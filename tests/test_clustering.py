"""The clustering learner: exact recovery with all data, chance with little, thresholds rising with
the level, exact confusion against enumeration, vmapped grid equal to separate runs, a sweep's pools."""
import itertools
import json
import logging

import chex
import jax
import numpy as np
import pytest

from launch import cluster as launch_cluster
from rhm_jax import clustering, coherence, data, grammar, lock, plan, program, results, thresholds
from rhm_jax import config as config_lib
from test_analysis import quick_rows

V, N, M, S, L = 8, 8, 3, 2, 3
P_GRID = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def grid_rows(g, pool, P_list, seed=0):
    """Learner rows (as run_sweep writes them) for one seed over a P grid."""
    out = jax.device_get(clustering.run_grid(g, pool, P_list, np.full(len(P_list), seed), 256))
    chance = np.asarray(clustering.chance_accuracy(g, jax.random.key(0)))
    rows = []
    for i, P in enumerate(P_list):
        row = dict(P=P, seed=seed, v=g.v, n=g.n, m=g.m, s=g.s, L=g.L)
        for level in range(1, g.L):
            row[f"accuracy_l{level}"] = float(out["accuracy"][i, level - 1])
            row[f"accuracy_chance_l{level}"] = float(chance[level - 1])
        for level in range(1, g.L + 1):
            row[f"validity_l{level}"] = float(out["validity"][i, level - 1])
            row[f"validity_novel_l{level}"] = float(out["validity_novel"][i, level - 1])
        rows.append(row)
    return rows, out


@pytest.fixture(scope="module")
def full():
    """v=8, m=3, L=3 grammars (seeds 0, 1): every one of the P_max sequences in the pool."""
    grammars = {}
    for seed in (0, 1):
        g = grammar.sample_rules(seed, V, N, M, S, L)
        pool, _ = data.sample_dataset(0, g, g.p_max, 0)
        rows, out = grid_rows(g, pool, P_GRID + [g.p_max])
        grammars[seed] = (g, pool, rows, out)
    return grammars


def true_partition(g, level_table, codes):
    """Learned-label-free reference: the true symbol of each base-(v+1) code of two tokens."""
    a, b = codes // (g.v + 1), codes % (g.v + 1)
    return np.asarray(g.parent[level_table])[a * g.v + b]


@pytest.mark.heavy
def test_all_sequences_recover_the_synonym_classes_exactly(full):
    for g, pool, rows, out in full.values():
        # every level-1 code that occurs is a production, and its learned class is its true symbol up to relabelling
        counts, labels = np.asarray(out["learned"].counts[0][-1]), np.asarray(out["learned"].labels[0][-1])
        seen = np.flatnonzero(counts > 0)
        assert seen.size == g.v * g.m
        truth = true_partition(g, g.L - 1, seen)
        labels = labels[seen]
        assert len(set(zip(truth, labels))) == g.v == len(set(labels))  # a bijection of classes
        np.testing.assert_array_equal(out["accuracy"][-1], 1.0)
        np.testing.assert_array_equal(out["validity"][-1], 1.0)


@pytest.mark.heavy
def test_far_below_v_m2_the_learner_is_at_chance(full):
    # P = 2, 4 rows against v m^2 = 72: as good as random labels of every tuple, up to their spread
    # (normalized accuracy measured <= 0.10 over 8 grammars x 4 seeds x P in {2, 4}), far from 1/2
    for g, pool, rows, out in full.values():
        for i in range(2):
            for level in (1, 2):
                P_K, y_K = clustering.normalized(rows[i:i + 1], "accuracy", level)
                assert y_K[0] < 0.2, (rows[i], level)


@pytest.mark.heavy
def test_thresholds_rise_with_the_level_and_are_printed_beside_v_m_l_plus_1(full):
    for seed, (g, pool, rows, out) in full.items():
        table = {(t["quantity"], t["level"]): t for t in clustering.thresholds(rows)}
        first, second = table["accuracy", 1], table["accuracy", 2]
        print(f"grammar seed {seed}: learner P*_1 = {first['P_star']:.0f} (v m^2 = {first['theory']:.0f}),"
              f" P*_2 = {second['P_star']:.0f} (v m^3 = {second['theory']:.0f})")
        assert first["censored"] == second["censored"] == ""
        assert 2 <= first["P_star"] < second["P_star"] <= 8192
        # every level is exact from some P on: accuracy 1 at the largest P of the grid
        assert rows[-2]["accuracy_l1"] == rows[-2]["accuracy_l2"] == 1.0


@pytest.mark.heavy
def test_thresholds_are_labelled_by_quantity_with_the_level_they_need_clustered(full, tmp_path):
    g, pool, rows, out = full[0]
    table = clustering.thresholds(rows, ("accuracy", "validity"))
    assert [(t["quantity"], t["level"], t["clustered"]) for t in table] == [
        ("accuracy", 1, 1), ("accuracy", 2, 2), ("validity", 1, 0), ("validity", 2, 1), ("validity", 3, 2)]
    assert [t["theory"] for t in table] == [g.v * g.m ** (t["clustered"] + 1) for t in table]
    assert table[2]["censored"] == "below"  # validity_1 is 1 at any P: observed tuples only
    results.write_rows(clustering.path(str(tmp_path)), rows)
    drawn = clustering.report_thresholds([str(tmp_path)])  # the P figure's: validity, like the networks'
    assert [(r["label"], r["quantity"], r["level"]) for r in drawn] == [
        ("clustering learner (tokens) validity", "validity", level) for level in (1, 2, 3)]
    assert [r["P_star"] for r in drawn[1:]] == [t["P_star"] for t in table[3:]]
    accuracy = clustering.report_thresholds([str(tmp_path)], "accuracy")
    assert [(r["label"], r["level"], r["P_star"]) for r in accuracy] == [
        ("clustering learner (tokens) accuracy", t["level"], t["P_star"]) for t in table[:2]]
    with pytest.raises(ValueError, match="quantity must be one of"):
        clustering.report_thresholds([str(tmp_path)], "copies")


@pytest.mark.heavy
def test_validity_l_needs_level_l_minus_1_clustered_whatever_level_l(full):
    """The level map: a generated level-l node is valid once levels 1..l-1 are clustered right."""
    g, pool, rows, out = full[0]
    learned = jax.tree.map(lambda x: x[-1], out["learned"])  # all sequences: every level exact
    rng = np.random.default_rng(0)

    def per_level(scrambled_level=None):
        labels = list(learned.labels)
        if scrambled_level is not None:  # random classes for the observed codes of one level
            label = np.asarray(labels[scrambled_level - 1])
            labels[scrambled_level - 1] = np.where(label < g.v, rng.integers(0, g.v, label.shape), g.v).astype(np.int32)
        tokens = clustering.generate(learned.replace(labels=tuple(labels)), jax.random.key(1), 1024, g.v, g.s, g.L)
        return np.asarray(coherence.validity(g, tokens).per_level.mean(0))

    np.testing.assert_array_equal(per_level(), 1.0)
    top = per_level(2)  # level 2 wrong, level 1 exact: level-2 nodes all valid, the root's children not
    assert top[0] == top[1] == 1.0 and top[2] < 0.75, top
    low = per_level(1)  # level 1 wrong: level-2 nodes valid only by chance
    assert low[0] == 1.0 and low[1] < 0.75, low
    # on the learner's own curve (measured 139 < 231 <= 560): validity_3 passes 1/2 once level 2 is
    # partly clustered, after level 1 is and no later than level 2's accuracy does
    table = {(t["quantity"], t["level"]): t["P_star"] for t in clustering.thresholds(rows, ("accuracy", "validity"))}
    assert table["accuracy", 1] < table["validity", 3] <= table["accuracy", 2], table


@pytest.mark.heavy
def test_generated_tuples_are_observed_ones(full):
    g, pool, rows, out = full[0]
    # a learned grammar emits only level-1 tuples from its data, so level 1 is valid at every P
    np.testing.assert_array_equal(out["validity"][:, 0], 1.0)
    assert rows[1]["P"] == 4
    tokens = np.asarray(out["samples"][1])
    observed = {tuple(t) for t in np.asarray(pool[:4]).reshape(-1, g.s).tolist()}
    assert {tuple(t) for t in tokens.reshape(-1, g.s).tolist()} <= observed


@pytest.mark.heavy
def test_vmapped_grid_equals_separate_runs(full):
    g, pool, rows, out = full[0]
    picks = [1, 6, 9]  # P = 4, 128, 1024
    for i in picks:
        one = clustering.run_grid(g, pool, [P_GRID[i]], [0], 256)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], one), jax.tree.map(lambda x: x[i], out))


def test_confusion_equals_enumeration_of_subtrees():
    g = grammar.sample_rules(3, 4, 4, 2, 2, 3)
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, g.v + 1, (g.v + 1) ** g.s) for _ in range(g.L - 1)]
    A = [np.asarray(a) for a in clustering.confusion(g, [jax.numpy.asarray(x) for x in labels])]
    rules = [np.asarray(r) for r in g.rules]

    def subtrees(z, level):  # learned label of every expansion of symbol z at level (uniform over them)
        out = []
        for rule in rules[g.L - level][z]:
            kids = [[int(t)] for t in rule] if level == 1 else [subtrees(int(c), level - 1) for c in rule]
            for combo in itertools.product(*kids):
                out.append(int(labels[level - 1][combo[0] * (g.v + 1) + combo[1]]))
        return out

    for level in (1, 2):
        for z in range(g.v):
            counts = np.bincount(subtrees(z, level), minlength=g.v + 1)
            np.testing.assert_allclose(A[level - 1][z], counts / counts.sum(), atol=1e-6)


def test_accuracy_is_invariant_to_relabelling_and_needs_mutual_majority():
    A = np.eye(3, 4)
    assert float(clustering.accuracy(A)) == 1.0
    assert float(clustering.accuracy(A[:, [2, 0, 1, 3]])) == 1.0
    merged = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], float)  # two classes in one label
    assert float(clustering.accuracy(merged)) == pytest.approx(2 / 3)
    assert float(clustering.accuracy(np.eye(3, 4)[:, [3, 3, 3, 0]])) == 0.0  # all unassigned


def test_crossing_reads_the_last_rise_and_names_the_censoring():
    P = np.array([1.0, 10, 100, 1000])
    assert clustering.crossing(P, np.array([0.9, 0.2, 0.4, 0.6]))[0] == pytest.approx(10**2.5)
    assert clustering.crossing(P, np.array([0.0, 0.1, 0.2, 0.3])) == (pytest.approx(np.nan, nan_ok=True), "above")
    assert clustering.crossing(P, np.array([0.6, 0.7, 0.8, 0.9]))[1] == "below"
    assert clustering.crossing(P[:1], np.array([0.6]))[1] == "one P"
    assert clustering.crossing(P, np.array([np.nan, 0.2, 0.4, 0.6]))[0] == pytest.approx(10**2.5)


def test_bad_input_is_refused_before_compiling():
    g = grammar.sample_rules(0, V, N, M, S, L)
    pool, _ = data.sample_dataset(0, g, 16, 0)
    with pytest.raises(ValueError, match="every P must lie in 1..16"):
        clustering.run_grid(g, pool, [0, 8], [0, 0], 16)
    with pytest.raises(ValueError, match="every P must lie in 1..16"):
        clustering.run_grid(g, pool, [17], [0], 16)
    with pytest.raises(ValueError, match="equal length"):
        clustering.run_grid(g, pool, [4, 8], [0], 16)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        clustering.run_grid(g, pool, [4], [0], 0)
    with pytest.raises(ValueError, match=r"must lie in 0..v-1"):
        clustering.run_grid(g, pool + 8, [4], [0], 16)
    with pytest.raises(ValueError, match="learner rows"):
        clustering.thresholds([])
    row = dict(P=4, v=8, n=8, m=3, s=2, L=3, grammar_seed=0, accuracy_l1=0.5, accuracy_chance_l1=0.25)
    with pytest.raises(ValueError, match="one grammar"):
        clustering.thresholds([row, dict(row, grammar_seed=1)])


@pytest.mark.heavy
def test_on_the_quick_sweeps_data_thresholds_are_ordered_beside_the_bpunets(tmp_path, capsys):
    """The learner on exactly the quick sweep's training rows, beside its stored bpUNet rows."""
    overrides = ["--config.eval.num_samples=64"]
    config = config_lib.load("sweeps/hierarchy_in_p.py:quick", overrides)
    g, pool = clustering.sweep_data(config)
    setup = program.setup(plan.single(config).settings, plan.single(config).rows)
    np.testing.assert_array_equal(pool, np.asarray(setup.pool_GxQxD[0]))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)[0]).all()), g, setup.grammar))
    assert launch_cluster.main(["--workdir", str(tmp_path), "--config", "sweeps/hierarchy_in_p.py:quick",
                                *overrides]) == 0
    assert "accuracy level 1" in capsys.readouterr().out
    stored = clustering.load(str(tmp_path))
    assert stored == [json.loads(line) for line in (tmp_path / "clustering.jsonl").read_text().splitlines()]
    points = config_lib.load_sweep("sweeps/hierarchy_in_p.py:quick")  # m = 3 (the stored rows'), then m = 2
    grids = {p["grammar.m"]: tuple(p["data.num_train"]) for p in points}
    assert sorted({r["m"] for r in stored}) == sorted(grids)
    rows = [r for r in stored if r["m"] == 3]
    assert [(r["P"], r["seed"], r["context"]) for r in rows] == [(P, 0, "tokens") for P in grids[3]]
    learner = {t["level"]: t for t in clustering.thresholds(rows) if t["quantity"] == "accuracy"}
    bpunets = thresholds.summary(thresholds.table(quick_rows(), at="best")).set_index("level")
    with capsys.disabled():
        for level in (1, 2):
            print(f"\nquick sweep data, level {level}: learner P* = {learner[level]['P_star']:.0f}, bpUNets P* ="
                  f" {bpunets.loc[level, 'P_star']:.0f} (best evaluation), v m^(l+1) = {learner[level]['theory']:.0f}")
    assert learner[1]["censored"] == learner[2]["censored"] == ""
    assert learner[1]["P_star"] < learner[2]["P_star"]
    assert rows[-1]["accuracy_l1"] == 1.0  # P = 1024 >> v m^2: level 1 exact


def test_launch_cluster_reads_the_workdirs_config_and_refuses_another_grammar(tmp_path, capsys):
    config = config_lib.load("sweeps/smoke.py", ["--config.data.num_train=(8,)"])
    (tmp_path / "config.json").write_text(json.dumps({"config": config_lib.to_dict(config)}))
    assert launch_cluster.main(["--workdir", str(tmp_path), "--config", "sweeps/smoke.py",
                                "--config.grammar.seed=1", "--config.data.num_train=(8,)"]) == 2
    assert "differs from" in capsys.readouterr().err and not (tmp_path / "clustering.jsonl").exists()
    assert launch_cluster.main(["--workdir", str(tmp_path / "none")]) == 2
    assert "holds no config.json" in capsys.readouterr().err
    stored, points = launch_cluster.load_config(str(tmp_path), None, [])
    assert stored.data.num_train == (8,) and points == [{}]


@pytest.mark.heavy
def test_the_learner_runs_on_every_dataset_of_a_sweep(caplog):
    config = config_lib.load("tests/data/two_programs.py")
    points = config_lib.load_sweep("tests/data/two_programs.py")
    with caplog.at_level(logging.INFO, logger="rhm_jax"):
        rows = clustering.run_sweep(config, points=points, restarts=2, iterations=3)
    # a line per dataset learned: the learner is a stage of its own (seconds to a minute)
    assert [m.split(" (")[0] for m in caplog.messages if m.startswith("clustering learner")] == [
        f"clustering learner: dataset {k} of 4" for k in (1, 2, 3, 4)]
    # the two widths share their data: each (grammar seed, data seed, P) once
    got = sorted((r["grammar_seed"], r["data_seed"], r["P"]) for r in rows)
    assert got == [(g, d, P) for g in (0, 1) for d in (0, 1) for P in (8, 16)]
    g, pool = clustering.sweep_data(config)  # grammar 0, data 0: the same rows as that model trains on
    other = config_lib.load("tests/data/two_programs.py")
    other.grammar.seed, other.data.seed = 1, 1
    assert not np.array_equal(pool, clustering.sweep_data(other)[1])


@pytest.mark.heavy
def test_launch_cluster_respects_the_lock_and_takes_no_abbreviated_options(tmp_path, capsys):
    config = config_lib.load("sweeps/hierarchy_in_p.py:quick", ["--config.data.num_train=(8,)"])
    (tmp_path / "config.json").write_text(json.dumps({"config": config_lib.to_dict(config)}))
    with lock.hold(str(tmp_path)):  # a run writing this directory
        assert launch_cluster.main(["--workdir", str(tmp_path)]) == 2
    assert "in use by another" in capsys.readouterr().err and not (tmp_path / "clustering.jsonl").exists()
    with pytest.raises(SystemExit) as done:  # not --context
        launch_cluster.main(["--workdir", str(tmp_path), "--cont", "labels"])
    assert done.value.code == 2 and "unknown option --cont; did you mean --context?" in capsys.readouterr().err


@pytest.mark.heavy
def test_labels_context_is_the_tokens_context_at_level_1_and_recovers_every_level(full):
    g, pool, rows, out = full[0]
    picks = [7, len(P_GRID)]  # P = 256 and P_max
    labels = clustering.run_grid(g, pool, [rows[i]["P"] for i in picks], [0, 0], 64, context="labels")
    np.testing.assert_array_equal(labels["learned"].labels[0], out["learned"].labels[0][np.array(picks)])
    np.testing.assert_array_equal(labels["accuracy"][-1], 1.0)
    with pytest.raises(ValueError, match="context must be one of"):
        clustering.run_grid(g, pool, [4], [0], 16, context="siblings")
