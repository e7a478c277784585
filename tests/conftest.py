"""Fixtures shared by the test modules."""
from __future__ import annotations

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache for one module and the subprocesses it starts; restored afterwards."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield path
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


def pytest_collection_modifyitems(items):
    """A slow (end-to-end) test is heavy too, so ``-m 'not heavy'`` (the fast tier) leaves it out."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("heavy"):
            item.add_marker(pytest.mark.heavy)
