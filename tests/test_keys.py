"""keys: every config key classified once, and the tables derived from it."""
import os
import re

import pytest

from rhm_jax import config as config_lib
from rhm_jax import keys, plan, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_key_of_the_schema_is_classified_and_nothing_else():
    schema = set(config_lib.flatten(config_lib.to_dict(config_lib.base_config())))
    assert set(keys.KEYS) == schema
    assert {key.kind for key in keys.KEYS.values()} == set(keys.KINDS)
    assert all(key.doc for key in keys.KEYS.values())


def test_columns_are_unique_and_do_not_shadow_row_fields():
    columns = [key.column for key in keys.KEYS.values()]
    assert len(set(columns)) == len(columns)
    assert keys.columns()["m"] == "grammar.m" and keys.columns()["grammar_seed"] == "grammar.seed"
    assert keys.columns()["process.beta1"] == "process.beta1"  # no short name: the dotted key
    # a swept key's column next to the grid row's fields names the same value or a new one
    for field in plan.ROW_FIELDS:
        if field in keys.columns():
            assert keys.KEYS[keys.columns()[field]].kind == "traced", field


def test_derived_tables_read_the_one_table():
    assert set(config_lib.EXECUTION_KEYS) == set(keys.of_kind("execution")) | set(keys.of_kind("layout"))
    assert "run.grid_slice" in config_lib.EXECUTION_KEYS and "eval.models_per_batch" in config_lib.EXECUTION_KEYS
    for column, key in results.CONFIG_COLUMNS.items():
        assert keys.KEYS[key].column == column and keys.KEYS[key].kind not in keys.RESUMABLE
        assert key not in keys.GRID_KEYS  # P, seed, lr come from the grid rows
    assert set(keys.GRID_KEYS) <= set(keys.of_kind("traced"))
    with pytest.raises(ValueError, match="kind='fast'"):
        keys.of_kind("fast")


def test_readme_key_table_lists_every_key_with_its_kind():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    documented = dict(re.findall(r"^\| `([\w.]+)` \| (\w+) \|", readme, flags=re.M))
    assert documented == {name: key.kind for name, key in keys.KEYS.items()}
    assert keys.table() in readme  # columns and docs too: regenerate with print(rhm_jax.keys.table())


def test_layout_keys_are_the_ones_that_group_models_and_are_never_swept():
    """Issue 26: the keys that decide which models share a compiled operation may change float32
    rounding, so they are not 'execution' keys; like those they resume and are never a sweep axis."""
    assert set(keys.of_kind("layout")) == {"eval.models_per_batch", "run.max_models_per_program",
                                           "run.grid_slice", "run.shard_models"}
    for key in keys.of_kind("layout"):
        with pytest.raises(ValueError, match=f"{key} is a layout key"):
            plan.sweep(key, [0, 1])
