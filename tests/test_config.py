"""Config: defaults validate, every bad setting is a ValueError naming it, overrides, round trips."""
import json

import ml_collections
import pytest

from rhm_jax import config as config_lib

SMOKE = "sweeps/smoke.py"


@pytest.fixture
def smoke():
    return config_lib.load(SMOKE)


def test_base_and_smoke_configs_validate(smoke):
    config_lib.validate(config_lib.base_config())
    config_lib.validate(smoke)


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


BAD = [
    ("grammar.m", 5, "m=5 must be <= v\\*\\*\\(s-1\\)"),
    ("grammar.L", 0, "L=0"),
    ("data.num_train", (0, 8), "data.num_train entry=0"),
    ("data.num_train", (), "data.num_train"),
    ("data.num_train", (8, 8), "must not repeat"),
    ("data.num_test", 0, "data.num_test=0"),
    ("train.batch_size", 0, "train.batch_size=0"),
    ("train.lr", (0.0,), "train.lr"),
    ("train.lr", (1e-3, -1.0), "train.lr"),
    ("train.b2", 1.0, "train.b2=1.0 must be in \\[0, 1\\)"),
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
    ("run.keep_last", 0, "run.keep_last=0"),
    ("run.checkpoint_every", -1, "run.checkpoint_every=-1"),
    ("run.max_models_per_program", -2, "run.max_models_per_program=-2"),
    ("run.grid_slice", "4/4", "run.grid_slice='4/4'.*M=4"),
    ("run.grid_slice", "0/5", "run.grid_slice='0/5'.*M=4"),
    ("run.grid_slice", "1", "run.grid_slice='1'"),
    ("train.mu_dtype", "float16", "train.mu_dtype"),
    ("train.p_below_batch", "all", "train.p_below_batch=.all. must be .repeat. or .full_batch."),
    ("process.beta2", 1e-4, "process.beta2"),
    ("process.name", "gaussian", "process.name"),
    ("network.width", 0, "width=0"),
    ("network.name", "mlp", "network name"),
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
        "--config.train.lr=3e-4", "--config.data.num_train=(8,16,32)", "--config.train.seeds=5",
        "--config.process.name=masked", "--config.network.authors_schedule=false",
        "--config.network.time_conditioning=True", "--config.train.num_epochs=2"])
    assert config.train.lr == (3e-4,)
    assert config.data.num_train == (8, 16, 32)
    assert config.train.seeds == (5,)
    assert config.process.name == "masked"
    assert config.network.authors_schedule is False
    assert config.network.time_conditioning is True
    assert config.train.num_epochs == 2.0 and isinstance(config.train.num_epochs, float)


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
