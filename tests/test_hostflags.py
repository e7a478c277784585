"""hostflags: the entry points' XLA settings on the CPU, decided before jax is imported and recorded.

The pytest process imported jax long ago, so what an entry point does at start-up is checked in
fresh Python processes; the decision itself (``flags_for``) is a pure function of the environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rhm_jax import hostflags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_PLUGINS = ()  # flags_for's plugin list in these tests: none installed


def test_a_cpu_run_asking_for_cores_gets_a_host_device_per_core():
    cores = {hostflags.ENV: "cores"}
    value, _ = hostflags.flags_for(cores, cores=2, plugins=NO_PLUGINS)
    assert value == "--xla_force_host_platform_device_count=2"
    value, _ = hostflags.flags_for({**cores, "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, cores=4, plugins=NO_PLUGINS)
    assert value == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=4"
    value, _ = hostflags.flags_for(cores, cores=64, plugins=NO_PLUGINS)
    assert value.endswith(f"={hostflags.MAX_DEVICES}")


@pytest.mark.parametrize("environ, why", [
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, "already"),  # the user's value wins
    ({}, "one host device"),  # the default: XLA's one device (a run's bits then never depend on its cores)
    ({hostflags.ENV: "1"}, "one host device"),
    ({"JAX_PLATFORMS": "cuda"}, "not a CPU run"),
    ({"JAX_PLATFORMS": "tpu,cpu"}, "not a CPU run"),
])
def test_flags_are_left_alone(environ, why):
    value, reason = hostflags.flags_for(environ, cores=2, plugins=NO_PLUGINS)
    assert value is None and why in reason


def test_an_installed_accelerator_plugin_means_not_a_cpu_run():
    # any importable module stands in for a GPU plugin; JAX_PLATFORMS=cpu overrides it
    cores = {hostflags.ENV: "cores"}
    assert hostflags.flags_for(cores, cores=2, plugins=("json",))[0] is None
    assert hostflags.flags_for({**cores, "JAX_PLATFORMS": "cpu"}, cores=2, plugins=("json",))[0] is not None


def test_the_device_count_can_be_chosen_and_bad_values_name_the_variable():
    assert hostflags.flags_for({hostflags.ENV: "3"}, cores=2, plugins=NO_PLUGINS)[0].endswith("=3")
    for bad in ("0", "-2", "two"):
        with pytest.raises(ValueError, match=f"{hostflags.ENV}='{bad}' must be an integer >= 1 or 'cores'"):
            hostflags.flags_for({hostflags.ENV: bad}, cores=2, plugins=NO_PLUGINS)


def test_apply_after_jax_was_imported_changes_nothing_and_says_so():
    environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    found = hostflags.apply(environ)  # jax is imported in this process
    assert environ == {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert found["set_by_rhm_jax"] is False and "imported" in found["reason"]


SCRIPT = """
import json, os, sys
import launch.local  # the entry point: sets its flags at import, before rhm_jax imports jax
import jax
from rhm_jax import rundir
print(json.dumps(dict(devices=len(jax.local_devices()), xla=rundir.provenance()["xla"])))
"""


def entry_point(**env: str) -> dict:
    """What a fresh process that imports launch.local sees: its device count and the provenance's record."""
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", hostflags.ENV, "JAX_PLATFORMS")}
    environ.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **env)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=environ, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_entry_point_sets_the_flags_before_jax_and_records_them():
    found = entry_point(**{hostflags.ENV: "2"})
    assert found["devices"] == 2
    assert found["xla"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    assert found["xla"]["set_by_rhm_jax"] is True and found["xla"][hostflags.ENV] == "2"


def test_entry_point_leaves_a_users_flags_and_one_device_alone():
    found = entry_point(XLA_FLAGS="--xla_force_host_platform_device_count=3")
    assert found["devices"] == 3 and found["xla"]["set_by_rhm_jax"] is False
    found = entry_point(**{hostflags.ENV: "1"})
    assert found["devices"] == 1 and found["xla"]["set_by_rhm_jax"] is False
    found = entry_point()  # the default: one device, whatever the cores
    assert found["devices"] == 1 and found["xla"]["set_by_rhm_jax"] is False
