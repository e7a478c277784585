"""Config: defaults validate, every bad setting is a ValueError naming it, overrides, round trips."""
import json
import re

import ml_collections
import pytest

from rhm_jax import config as config_lib

SMOKE = "sweeps/smoke.py"


@pytest.fixture
def smoke():
    return config_lib.load(SMOKE)


def test_base_and_smoke_configs_validate_and_return_their_process(smoke):
    assert config_lib.validate(config_lib.base_config()).name == "uniform"
    process = config_lib.validate(smoke)
    assert (process.v, process.d) == (smoke.grammar.v, smoke.grammar.s**smoke.grammar.L)


def test_config_is_locked(smoke):
    with pytest.raises(AttributeError):
        smoke.train.learning_rate = 1e-3
    with pytest.raises(AttributeError):
        smoke.extra = 1


def test_p_max_bound_is_exact(smoke):
    # smoke grammar: n=2, m=2, s=2, L=3 -> P_max = 2 * 2**7 = 256, num_test = 32.
    smoke.data.num_train = (16, 256 - 32)
    config_lib.validate(smoke)
    smoke.data.num_train = (16, 256 - 32 + 1)
    with pytest.raises(ValueError, match=r"data.num_train.*P=225.*P_max=256"):
        config_lib.validate(smoke)


@pytest.mark.parametrize("overrides, message", [
    (["--config.grammar.L=40"], r"grammar.L=40 with grammar.s=2 gives sequences of s\*\*L = 2\*\*40 tokens; the limit is 2\*\*16"),
    (["--config.grammar.s=100000000"], r"grammar.L=3 with grammar.s=100000000 .*the limit is 2\*\*16"),
    (["--config.grammar.L=1", "--config.grammar.s=40"], r"grammar.s=40 with grammar.v=4 needs parse tables of v\*\*s = 2\*\*80"),
])
def test_huge_grammars_are_refused_from_logarithms(overrides, message):
    """These would hang computing m**((s**L-1)/(s-1)) or v**s as integers (the bound is checked in logs)."""
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config_lib.load(SMOKE, overrides))


def test_dataset_size_is_bounded_before_drawing():
    """P = 2**30 on v=16, m=4, L=4 passes P_max (1.7e10) but would take hours to draw."""
    config = config_lib.load("sweeps/hierarchy_in_p.py", ["--config.data.num_train=(1024, 1073741824)"])
    with pytest.raises(ValueError, match=r"data.num_train max P=1073741824 .*the limit is 2\*\*25"):
        config_lib.validate(config)
    config.data.num_train = (1024, 2**20)
    config_lib.validate(config)


BAD = [
    ("grammar.m", 5, "m=5 must be <= v\\*\\*\\(s-1\\)"),
    ("grammar.L", 0, "L=0"),
    ("data.num_train", (-1, 8), "data.num_train entry=-1"),  # 0 is online (tests/test_online.py)
    ("data.num_train", (), "data.num_train"),
    ("data.num_train", (8, 8), "must not repeat"),
    ("data.num_test", 0, "data.num_test=0"),
    ("train.batch_size", 0, "train.batch_size=0"),
    ("train.lr", (0.0,), "train.lr"),
    ("train.lr", (1e-3, -1.0), "train.lr"),
    ("train.b2", 1.0, "train.b2=1.0 must be 0 or in \\[1.175e-38, 1\\)"),
    ("train.ema_decay", -0.1, "train.ema_decay"),
    ("train.seeds", (), "train.seeds"),
    ("train.seeds", (1, 1), "train.seeds.*repeat"),
    ("train.steps_per_call", 0, "train.steps_per_call=0"),
    ("train.num_steps", 0, "exactly one of train.num_steps"),
    ("train.warmup_steps", -1, "train.warmup_steps"),
    ("eval.num_samples", 0, "eval.num_samples=0"),
    ("eval.per_octave", 0, "eval.per_octave=0"),
    ("eval.num_windows", 0, "eval.num_windows=0"),
    ("eval.loss_rows", 0, "eval.loss_rows=0"),
    ("eval.models_per_batch", -1, "eval.models_per_batch=-1"),
    ("train.adam_eps", 0.0, "train.adam_eps"),
    # positive values that are 0 in the float32 they feed (issue 26's sweep of bad values: accepted)
    ("train.adam_eps", 1e-300, r"train.adam_eps=1e-300 must be in \[1.175e-38, 1\)"),
    ("train.lr", (1e-3, 1e-300), r"train.lr=.* >= 1.175e-38"),
    ("train.b1", 1e-300, r"train.b1=1e-300 must be 0 or in \[1.175e-38, 1\)"),
    ("train.ema_decay", 1e-300, r"train.ema_decay=1e-300 must be 0 or"),
    ("process.beta1", 1e-300, r"process.beta1=1e-300 must be >= 1.175e-38"),
    ("process.eps", 1e-300, r"process.eps=1e-300 must be in \[1.175e-38, 0.5\)"),  # unused by 'uniform', checked
    ("process.power", 1e-300, r"process.power=1e-300 must be a finite number >= 1.175e-38"),
    ("network.mlp_ratio", 1e-300, r"network mlp_ratio=1e-300 .*round\(mlp_ratio \* width\) >= 1"),  # bpUNet's too
    ("run.keep_last", 0, "run.keep_last=0"),
    ("run.checkpoint_every", -1, "run.checkpoint_every=-1"),
    ("run.max_models_per_program", -2, "run.max_models_per_program=-2"),
    ("run.grid_slice", "4/4", "run.grid_slice='4/4'.*0 <= k < K"),  # K against the sweep: tests/test_plan.py
    ("run.grid_slice", "1", "run.grid_slice='1'"),
    ("train.mu_dtype", "float16", "train.mu_dtype"),
    ("train.p_below_batch", "all", "train.p_below_batch=.all. must be .repeat. or .full_batch."),
    ("process.beta2", 1e-4, "process.beta2"),
    ("process.name", "gaussian", "process.name"),
    ("network.width", 0, "width=0"),
    ("network.name", "mlp", "network name"),
    ("network.backward", "gpu", r"network backward='gpu' must be one of \('auto', 'jax', 'rowmajor'\)"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_setting_is_a_value_error_naming_it(smoke, key, value, message):
    section, name = key.split(".")
    smoke[section][name] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(smoke)


def test_steps_and_epochs_are_exclusive(smoke):
    smoke.train.num_epochs = 10.0
    with pytest.raises(ValueError, match="exactly one of train.num_steps=64 and train.num_epochs=10.0"):
        config_lib.validate(smoke)
    smoke.train.num_steps = 0
    config_lib.validate(smoke)


def test_overrides_set_typed_values():
    config = config_lib.load(SMOKE + ":quick", [
        "--config.train.lr=3e-4", "--config.data.num_train=(8,16,32)", "--config.train.seeds=range(5)",
        "--config.process.name=masked", "--config.network.authors_schedule=false",
        "--config.network.time_conditioning=True", "--config.train.num_epochs=2"])
    assert config.train.lr == (3e-4,)
    assert config.data.num_train == (8, 16, 32)
    assert config.train.seeds == (0, 1, 2, 3, 4)
    assert config.process.name == "masked"
    assert config.network.authors_schedule is False
    assert config.network.time_conditioning is True
    assert config.train.num_epochs == 2.0 and isinstance(config.train.num_epochs, float)


@pytest.mark.parametrize("text, seeds", [("3", (3,)), ("1", (1,)), ("(3,)", (3,)), ("[3]", (3,)),
                                         ("(4,7)", (4, 7)), ("[0, 2]", (0, 2)), ("3,", (3,)), ("4, 7", (4, 7)),
                                         ("range(3)", (0, 1, 2)), ("range(2, 5)", (2, 3, 4)),
                                         (" range(0, 6, 2) ", (0, 2, 4))])
def test_train_seeds_follow_config_flags_and_range_spells_a_count(text, seeds):
    # one meaning for one text: a bare int is that seed, as ml_collections' config_flags reads it
    assert config_lib.load(SMOKE, [f"--config.train.seeds={text}"]).train.seeds == seeds


@pytest.mark.parametrize("text, message", [("range(0)", "'range(0)' is empty"),
                                           ("range(1.5)", "range takes 1 to 3 integers"),
                                           ("range()", "range takes 1 to 3 integers"),
                                           ("range(n)", "range takes 1 to 3 integers")])
def test_a_bad_range_is_refused_naming_it(text, message):
    with pytest.raises(ValueError, match=rf"override '--config.train.seeds={re.escape(text)}'.*{re.escape(message)}"):
        config_lib.load(SMOKE, [f"--config.train.seeds={text}"])


@pytest.mark.parametrize("override,message", [
    ("--config.train.learning_rate=1", "unknown config key 'train.learning_rate'"),
    ("--config.optim.lr=1", "unknown config key 'optim.lr'"),
    ("--config.train.lr.x=1", "unknown config key 'train.lr.x'"),
    ("--config.train=1", "names a section"),
    ("--config.train.batch_size=1.5", "batch_size"),
    ("--config.train.batch_size=big", "batch_size"),
    ("--config.network.authors_schedule=maybe", "authors_schedule"),
    ("train.lr=1", "must look like --config"),
])
def test_bad_override_fails_loudly(override, message):
    with pytest.raises(ValueError, match=message):
        config_lib.load(SMOKE, [override])


def test_missing_config_file():
    with pytest.raises(ValueError, match="no config file"):
        config_lib.load("sweeps/does_not_exist.py")


def test_dict_round_trip_through_json(smoke):
    smoke.train.seeds = (3, 1)
    smoke.network.time_conditioning = True
    values = json.loads(json.dumps(config_lib.to_dict(smoke)))
    again = config_lib.from_dict(values)
    assert config_lib.to_dict(again) == config_lib.to_dict(smoke)
    assert again.train.seeds == (3, 1) and isinstance(again, ml_collections.ConfigDict)
    assert config_lib.config_hash(again) == config_lib.config_hash(smoke)
    with pytest.raises(AttributeError):
        again.train.foo = 1  # still locked


def test_from_dict_rejects_unknown_keys(smoke):
    values = config_lib.to_dict(smoke)
    values["train"]["momentum"] = 0.9
    with pytest.raises(ValueError, match="unknown config key 'train.momentum'"):
        config_lib.from_dict(values)


def test_hash_tracks_results_not_execution(smoke):
    h = config_lib.config_hash(smoke)
    smoke.train.steps_per_call = 7
    smoke.run.keep_last = 5
    assert config_lib.config_hash(smoke) == h
    smoke.train.batch_size = 9
    assert config_lib.config_hash(smoke) != h


def test_differences_names_keys():
    a = {"train": {"lr": [1e-4], "batch_size": 64}, "run": {"keep_last": 3}}
    b = {"train": {"lr": [3e-4], "batch_size": 64}, "run": {"keep_last": 1}, "eval": {"x": 1}}
    assert config_lib.differences(a, b) == ["eval.x", "run.keep_last", "train.lr"]
    assert config_lib.differences(a, b, ignore=("run.keep_last",)) == ["eval.x", "train.lr"]
