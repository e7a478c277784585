"""plan: the sweep declaration, its expansion into models and programs, and every bad input named."""
import json
import math
import os

import pytest

from rhm_jax import config as config_lib
from rhm_jax import plan, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def smoke():
    return config_lib.load(os.path.join(ROOT, "sweeps", "smoke.py"))  # v=4, n=2, m=2, s=2, L=3: P_max=256


def two_m(seeds=(0, 1)):
    """m zipped with its P grid, times grammar seeds: 2 static values x 2 grammar seeds x 2 P x 2 model seeds."""
    return plan.product(plan.zipped(plan.sweep("grammar.m", [2, 3]),
                                    plan.sweep("data.num_train", [(8, 16), (16, 32)])),
                        plan.sweep("grammar.seed", list(seeds)))


def test_axes_read_like_the_experiment():
    assert plan.sweep("grammar.m", [3, 4]) == [{"grammar.m": 3}, {"grammar.m": 4}]
    assert plan.product(plan.sweep("grammar.m", [3, 4]), plan.sweep("grammar.seed", [0, 1])) == [
        {"grammar.m": 3, "grammar.seed": 0}, {"grammar.m": 3, "grammar.seed": 1},
        {"grammar.m": 4, "grammar.seed": 0}, {"grammar.m": 4, "grammar.seed": 1}]  # first axis outermost
    assert plan.zipped(plan.sweep("grammar.m", [3, 4]), plan.sweep("data.num_train", [(8,), (16, 32)])) == [
        {"grammar.m": 3, "data.num_train": [8]}, {"grammar.m": 4, "data.num_train": [16, 32]}]


def test_static_values_become_consecutive_programs_and_traced_ones_share_them(smoke):
    p = plan.make_plan(smoke, two_m())
    assert p.num_models == 16 and p.swept == ("grammar.m", "data.num_train", "grammar.seed")
    assert [q.index for q in p.programs] == [0, 1]
    assert [q.settings.grammar.m for q in p.programs] == [2, 3]
    assert sorted({r["P"] for r in p.programs[1].rows}) == [16, 32]
    rows = [r for q in p.programs for r in q.rows]
    assert [r["index"] for r in rows] == list(range(16))
    first = p.programs[0].rows
    assert [(r["grammar_seed"], r["P"], r["seed"]) for r in first] == [
        (g, P, s) for g in (0, 1) for P in (8, 16) for s in (0, 1)]  # per point: P outermost, then seeds
    assert {r["m"] for r in first} == {2} and {r["m"] for r in p.programs[1].rows} == {3}
    assert set(first[0]) == set(plan.ROW_FIELDS) | {"m"}
    assert first[0]["budget_steps"] == 64 and first[0]["budget_epochs"] == 64 * 8 / 8
    json.dumps([p.points, rows])  # JSON-ready for config.json
    hash(p.programs[0].settings)  # frozen: program memoizes compiled functions on it


def test_program_order_is_first_appearance_and_groups_interleaved_points(smoke):
    points = plan.product(plan.sweep("grammar.seed", [0, 1]), plan.sweep("network.width", [16, 8]))
    p = plan.make_plan(smoke, points)
    assert [q.settings.network["width"] for q in p.programs] == [16, 8]
    assert [[r["grammar_seed"] for r in q.rows][::4] for q in p.programs] == [[0, 1], [0, 1]]
    assert [r["width"] for r in p.programs[1].rows] == [8] * 8


def test_no_sweep_is_the_config_alone(smoke):
    p = plan.make_plan(smoke, [{}])
    assert p.swept == () and p.num_models == 4 and len(p.programs) == 1
    assert p.programs[0].settings == settings.of(smoke)
    assert [(r["P"], r["seed"]) for r in p.programs[0].rows] == [(16, 0), (16, 1), (64, 0), (64, 1)]


def test_written_points_are_stored_json_ready_and_optional_keys_take_values(smoke):
    points = [{"data.num_train": (8, 16), "process.sampler_steps": 10}, {"process.sampler_steps": None}]
    p = plan.make_plan(smoke, points)
    assert p.points == ({"data.num_train": [8, 16], "process.sampler_steps": 10}, {"process.sampler_steps": None})
    assert [r["process.sampler_steps"] for r in p.programs[0].rows] == [10] * 4
    assert p.programs[1].settings.process.sampler_steps is None and p.programs[0].settings.process.sampler_steps == 10
    assert p.programs[1].settings.sampler_label == str(smoke.process.T) and p.programs[0].settings.sampler_label == "10"


def test_bare_grid_axis_value_is_one_model_per_point(smoke):
    p = plan.make_plan(smoke, plan.zipped(plan.sweep("train.seeds", [3, 4]), plan.sweep("data.seed", [3, 4])))
    assert [(r["seed"], r["data_seed"]) for r in p.programs[0].rows] == [(3, 3), (3, 3), (4, 4), (4, 4)]
    # a point that leaves a swept key at its base value still gets its column
    p = plan.make_plan(smoke, [{}, {"train.b1": 0.5}])
    assert [r["b1"] for r in p.programs[0].rows] == [0.9] * 4 + [0.5] * 4


def test_grid_slice_cuts_the_whole_sweep(smoke):
    smoke.run.grid_slice = "1/3"
    p = plan.make_plan(smoke, two_m())
    assert p.num_models == 16
    assert [r["index"] for q in p.programs for r in q.rows] == list(range(5, 10))
    assert [q.index for q in p.programs] == [0, 1]  # the slice spans both programs
    smoke.run.grid_slice = "2/3"
    assert [q.index for q in plan.make_plan(smoke, two_m()).programs] == [1]
    smoke.run.grid_slice = "0/17"
    with pytest.raises(ValueError, match=r"run.grid_slice='0/17' needs K <= 16"):
        plan.make_plan(smoke, two_m())


# ----------------------------------------------------------------------------- bad input, one test each

def test_unknown_key_as_an_axis_is_named():
    with pytest.raises(ValueError, match=r"unknown config key 'grammar.mm'.*did you mean grammar.m"):
        plan.sweep("grammar.mm", [3])


def test_unknown_key_in_a_written_point_names_the_point(smoke):
    with pytest.raises(ValueError, match=r"sweep point 1 \(network.widht=8\): unknown config key 'network.widht'"):
        plan.make_plan(smoke, [{}, {"network.widht": 8}])


def test_execution_key_is_no_axis():
    with pytest.raises(ValueError, match="train.steps_per_call is an execution key"):
        plan.sweep("train.steps_per_call", [8, 16])


def test_key_swept_twice_is_named():
    with pytest.raises(ValueError, match="grammar.m is swept twice"):
        plan.product(plan.sweep("grammar.m", [2, 3]), plan.sweep("grammar.seed", [0]), plan.sweep("grammar.m", [4]))
    with pytest.raises(ValueError, match="grammar.m is swept twice"):
        plan.zipped(plan.sweep("grammar.m", [2, 3]), plan.sweep("grammar.m", [3, 4]))


def test_empty_axis_is_named():
    with pytest.raises(ValueError, match="sweep axis 'grammar.seed' is empty"):
        plan.sweep("grammar.seed", [])


def test_zipped_axes_of_different_lengths_are_named():
    with pytest.raises(ValueError, match=r"different lengths \(grammar.m: 2, data.num_train: 3\)"):
        plan.zipped(plan.sweep("grammar.m", [2, 3]), plan.sweep("data.num_train", [(8,), (16,), (32,)]))


def test_point_invalid_on_its_own_m_above_v_to_the_s_minus_1(smoke):
    points = plan.sweep("grammar.m", [2, 5])  # v=4, s=2: m <= 4
    with pytest.raises(ValueError, match=r"sweep point 1 \(grammar.m=5\): .*m=5"):
        plan.make_plan(smoke, points)


def test_point_invalid_on_its_own_p_above_p_max_of_its_grammar(smoke):
    # P_max = n m**7 = 256 at m=2 (with 32 test rows), 4374 at m=3: P=512 fits only the second grammar
    points = plan.zipped(plan.sweep("grammar.m", [3, 2]), plan.sweep("data.num_train", [(512,), (512,)]))
    with pytest.raises(ValueError, match=r"sweep point 1 \(grammar.m=2, data.num_train=\[512\]\): .*P_max=256"):
        plan.make_plan(smoke, points)


def test_value_of_the_wrong_type_names_point_and_key(smoke):
    with pytest.raises(ValueError, match=r"sweep point 0 \(grammar.m='three'\): grammar.m='three'"):
        plan.make_plan(smoke, plan.sweep("grammar.m", ["three"]))


def test_more_models_than_the_limit_is_refused_before_expanding(smoke, monkeypatch):
    monkeypatch.setattr(plan, "MAX_MODELS", 10)
    with pytest.raises(ValueError, match=r"sweep point 2 \(.*\): the sweep reaches 12 models.*MAX_MODELS is 10"):
        plan.make_plan(smoke, two_m())
    assert plan.make_plan(smoke, two_m()[:2]).num_models == 8


def test_repeated_point_is_refused(smoke):
    points = plan.sweep("grammar.seed", [0, 1]) + [{"grammar.seed": 1}]
    with pytest.raises(ValueError, match=r"sweep point 2 \(grammar.seed=1\) repeats sweep point 1"):
        plan.make_plan(smoke, points)
    with pytest.raises(ValueError, match="sweep point 1 .* repeats sweep point 0 .the config alone"):
        plan.make_plan(smoke, [{}, {"grammar.m": smoke.grammar.m}])  # the base value, written out


def test_empty_sweep_is_refused(smoke):
    with pytest.raises(ValueError, match="no points"):
        plan.make_plan(smoke, [])


SWEEP_FILE = '''
from rhm_jax import config as config_lib, plan

def get_config(arg=None):
    return config_lib.load({smoke!r})

def get_sweep(arg=None):
    seeds = [0] if arg == "quick" else [0, 1]
    return plan.product(plan.sweep("grammar.m", [2, 3]), plan.sweep("grammar.seed", seeds))
'''


def test_load_sweep_reads_get_sweep_and_refuses_an_override_of_a_swept_key(tmp_path):
    path = tmp_path / "two_m.py"
    path.write_text(SWEEP_FILE.format(smoke=os.path.join(ROOT, "sweeps", "smoke.py")))
    assert len(config_lib.load_sweep(str(path))) == 4
    assert len(config_lib.load_sweep(f"{path}:quick")) == 2
    assert len(config_lib.load_sweep(str(path), ["--config.network.width=8"])) == 4
    with pytest.raises(ValueError, match=r"override '--config.grammar.m=4' sets grammar.m, which the sweep.*"
                                         r"point 0: grammar.m=2"):
        config_lib.load_sweep(str(path), ["--config.grammar.m=4"])
    assert config_lib.load_sweep(os.path.join(ROOT, "sweeps", "smoke.py")) == [{}]  # no get_sweep


@pytest.mark.parametrize("spec", ["", "0/3", "2/3"])
@pytest.mark.parametrize("budget", [dict(num_steps=64, num_epochs=0.0), dict(num_steps=0, num_epochs=2.5)])
def test_rows_of_the_config_alone_are_sliced_in_order_with_their_budgets(smoke, spec, budget):
    """Without a sweep, a slice 'k/K' holds its share of the grid's rows (P outermost, then seeds),
    indices unchanged, each with its budget in steps and epochs."""
    smoke.train.update(budget)
    whole = plan.single(smoke).rows
    smoke.run.grid_slice = spec
    rows = plan.single(smoke).rows
    k, K = (0, 1) if spec == "" else map(int, spec.split("/"))
    assert rows == whole[k * len(whole) // K:(k + 1) * len(whole) // K]
    assert [(r["index"], r["P"], r["seed"]) for r in whole] == [(0, 16, 0), (1, 16, 1), (2, 64, 0), (3, 64, 1)]
    for r in rows:
        steps = 64 if budget["num_steps"] else math.ceil(2.5 * r["P"] / smoke.train.batch_size)
        assert r["budget_steps"] == steps and r["budget_epochs"] == steps * smoke.train.batch_size / r["P"]


def test_plan_rebuilt_from_what_config_json_stores_is_the_same(smoke):
    """config.json holds the base config and the points: planning them again gives the same models."""
    p = plan.make_plan(smoke, two_m())
    stored = json.loads(json.dumps(dict(config=config_lib.to_dict(smoke), points=p.points)))
    again = plan.make_plan(config_lib.from_dict(stored["config"]), stored["points"])
    assert again == p


def test_overlapping_points_that_reach_the_same_model_are_refused(smoke):
    """Issue 26: {P: (16,)} and {P: (16, 64)} were accepted; P=16 was trained and fitted twice."""
    with pytest.raises(ValueError, match=r"sweep point 1 .*reaches a model of sweep point 0 .*P=16.*same model twice"):
        plan.make_plan(smoke, [{"data.num_train": (16,)}, {"data.num_train": (16, 64)}])
    with pytest.raises(ValueError, match=r"sweep point 1 .*seed=2.*same model twice"):
        plan.make_plan(smoke, [{"train.seeds": (1, 2)}, {"train.seeds": (2,), "grammar.seed": 0}])
    # disjoint points that share a grid value but differ in another key stay accepted
    assert plan.make_plan(smoke, [{"data.num_train": (16,), "grammar.seed": 0},
                                  {"data.num_train": (16, 64), "grammar.seed": 1}]).num_models == 3 * len(smoke.train.seeds) * len(smoke.train.lr)
