"""Checkpoints: exact round trip of a stacked TrainState, keep policy, fallback past broken ones."""
import errno
import logging
import os

import chex
import jax
import jax.numpy as jnp
import pytest

import orbax.checkpoint as ocp

from rhm_jax import checkpoint, config as config_lib, networks, plan, settings, train


def _toy_init(key):
    return {"w": jax.random.normal(key, (4, 5)), "b": jnp.zeros(5)}


@pytest.fixture(scope="module")
def states():
    """Two stacked TrainStates (M=3) of a toy network: initial and perturbed."""
    config = config_lib.load("sweeps/smoke.py", ["--config.train.seeds=(0,1,2)", "--config.data.num_train=(16,)"])
    net = networks.Network(init=_toy_init, apply=None, num_params=networks.count_params)
    grid, _ = plan.make_grid(config)
    state = train.init_state(settings.TrainSettings.of(config), net, grid)
    other = state.replace(params=jax.tree.map(lambda x: x + 1.5, state.params), step=state.step + 7,
                          last_loss=jnp.arange(3.0))
    return state, other


def files_of(directory, step):
    root = os.path.join(directory, str(step))
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


def test_round_trip_is_exact(tmp_path, states):
    state, other = states
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(3, state, {"grid": [{"P": 16}], "config_hash": "abc"})
        ckpt.save(9, other, {"config_hash": "abc"})
        restored, meta = ckpt.restore(3, target=other)
        assert meta.pop("checksums") == jax.device_get(checkpoint.checksums(state)).tolist()
        assert meta.pop("tree") == checkpoint.tree_signature(state)  # what wrote it: checked before a restore
        assert meta == {"grid": [{"P": 16}], "config_hash": "abc", "step": 3}
        chex.assert_trees_all_equal(restored, state)
        assert type(restored) is type(state)
        step, latest, _ = ckpt.restore_latest(jax.eval_shape(lambda: state))
        assert step == 9
        chex.assert_trees_all_equal(latest, other)


def test_keep_policy(tmp_path, states):
    state, _ = states
    with checkpoint.Checkpointer(str(tmp_path), keep_last=2, keep_steps={1, 4, 8}) as ckpt:
        for step in range(1, 11):
            ckpt.save(step, state, {})
            assert ckpt.steps()[-1] == step  # the newest is never pruned
        assert ckpt.steps() == [1, 4, 8, 9, 10]
    assert sorted(os.listdir(tmp_path)) == ["1", "10", "4", "8", "9"]


def test_missing_step_lists_available(tmp_path, states):
    state, _ = states
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
        assert ckpt.restore_latest(state) is None
        ckpt.save(2, state, {})
        ckpt.save(5, state, {})
        with pytest.raises(ValueError, match=r"no checkpoint at step 4 .*available steps: \[2, 5\]"):
            ckpt.restore(4, state)


def test_tree_mismatch_is_a_value_error(tmp_path, states):
    state, _ = states
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(1, state, {})
        wider = state.replace(params={"w": jnp.zeros((3, 4, 6)), "b": jnp.zeros((3, 5))})
        with pytest.raises(checkpoint.Mismatch, match=r"step 1 .*leaf \.params\['w'\] was saved with per-model shape \(4, 5\)"
                                                      r" float32, the run expects \(4, 6\)"):
            ckpt.restore(1, wider)


@pytest.mark.parametrize("damage", ["truncate-data", "delete-manifest", "delete-meta"])
def test_broken_latest_falls_back_and_is_moved_aside(tmp_path, states, caplog, damage):
    state, other = states
    directory = str(tmp_path)
    with checkpoint.Checkpointer(directory) as ckpt:
        ckpt.save(4, state, {})
        ckpt.save(8, other, {})
    files = files_of(directory, 8)
    if damage == "truncate-data":
        data = max((f for f in files if f"state{os.sep}d{os.sep}" in f), key=os.path.getsize)
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif damage == "delete-manifest":
        os.remove(next(f for f in files if f.endswith(f"state{os.sep}manifest.ocdbt")))
    else:
        os.remove(next(f for f in files if f.endswith(f"meta{os.sep}metadata")))
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.removeFilter(checkpoint._drop_unretrieved)  # as in a fresh process
    late = logging.LogRecord("asyncio", logging.ERROR, __file__, 0, "Task exception was never retrieved", None, None)
    with checkpoint.Checkpointer(directory) as ckpt, caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match="step 8 .*unreadable"):
            ckpt.restore(8, state)
        # Issue 26's campaign (every checkpoint flipped): the other arrays' failed reads came
        # out as asyncio 'Task exception was never retrieved' tracebacks beside the warning
        assert not asyncio_logger.filter(late)
        asyncio_logger.removeFilter(checkpoint._drop_unretrieved)
        step, restored, _ = ckpt.restore_latest(state)
        assert step == 4
        chex.assert_trees_all_equal(restored, state)
        assert "step 8 is broken, falling back" in caplog.text
        assert ckpt.steps() == [4]
        assert [p for p in os.listdir(directory) if p.startswith("broken-8-")]  # kept, not deleted
        ckpt.save(8, other, {})  # the run can write that step again
        chex.assert_trees_all_equal(ckpt.restore(8, state)[0], other)


def test_saving_an_existing_step_moves_the_old_one_aside(tmp_path, states):
    state, other = states
    with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(1, state, {})
        ckpt.save(1, other, {})
        chex.assert_trees_all_equal(ckpt.restore(1, state)[0], other)
        assert [p for p in os.listdir(tmp_path) if p.startswith("superseded-1-")]


def flip_a_byte(directory, step):
    """XOR one byte in the middle of the step's largest array-data file (a silent bit flip).

    The array data a restore reads is ``state/d/``; files under ``state/ocdbt.process_<i>/d/`` are
    written too but not read back, so a flip there changes nothing (it made this test flaky).
    """
    data = max((f for f in files_of(directory, step) if f"state{os.sep}d{os.sep}" in f), key=os.path.getsize)
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))


def test_a_flipped_byte_in_array_data_fails_the_checksum_and_falls_back(tmp_path, states, caplog):
    state, other = states
    directory = str(tmp_path)
    with checkpoint.Checkpointer(directory) as ckpt:
        ckpt.save(4, state, {})
        ckpt.save(8, other, {})
    flip_a_byte(directory, 8)
    with checkpoint.Checkpointer(directory) as ckpt, caplog.at_level(logging.WARNING):
        with pytest.raises(checkpoint.BrokenCheckpoint, match="step 8 .*(checksum|unreadable)"):
            ckpt.restore(8, state)
        step, restored, _ = ckpt.restore_latest(state)
    assert step == 4 and "step 8 is broken, falling back" in caplog.text
    chex.assert_trees_all_equal(restored, state)
    assert [p for p in os.listdir(directory) if p.startswith("broken-8-")]


def test_checksums_see_every_single_bit_and_every_model(states):
    state, _ = states
    sums = checkpoint.checksums(state)
    assert sums.shape == (3,) and len(set(sums.tolist())) == 3  # three different models
    for bit in (0, 17, 31):
        w = state.params["w"]
        flipped = jax.lax.bitcast_convert_type(
            jax.lax.bitcast_convert_type(w, jnp.uint32).at[1, 2, 3].set(
                jax.lax.bitcast_convert_type(w, jnp.uint32)[1, 2, 3] ^ jnp.uint32(1 << bit)), jnp.float32)
        changed = checkpoint.checksums(state.replace(params=dict(state.params, w=flipped)))
        assert (changed != sums).tolist() == [False, True, False]


def test_a_transient_read_error_changes_nothing(tmp_path, states, monkeypatch):
    """EIO (or a permission or memory error) while reading is not a broken checkpoint: nothing is
    moved aside, the error propagates for the caller to stop on."""
    state, other = states
    directory = str(tmp_path)
    with checkpoint.Checkpointer(directory) as ckpt:
        ckpt.save(4, state, {})
        ckpt.save(8, other, {})
    before = sorted(os.listdir(directory))

    def failing_read(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", os.path.join(directory, "8"))

    monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_read)
    with checkpoint.Checkpointer(directory) as ckpt:
        with pytest.raises(checkpoint.ReadFailure, match="could not read the checkpoint at step 8 .*nothing was changed"):
            ckpt.restore_latest(state)
    assert sorted(os.listdir(directory)) == before


@pytest.mark.parametrize("err, expected", [
    (OSError(errno.EIO, "Input/output error"), True),
    (PermissionError(errno.EACCES, "Permission denied"), True),
    (MemoryError(), True),
    (ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.0GiB"), True),
    (FileNotFoundError(errno.ENOENT, "No such file"), False),
    (ValueError('OUT_OF_RANGE: Error reading "w/0.0": Requested byte range is not valid'), False),
    (ValueError("FAILED_PRECONDITION: ZSTD_decompressStream() failed"), False),
])
def test_environmental_errors_are_told_from_broken_files(err, expected):
    wrapped = ValueError("orbax restore failed")
    wrapped.__cause__ = err
    assert checkpoint.environmental(wrapped) is expected


def test_a_full_disk_during_a_save_is_one_error_and_then_quiet(tmp_path, states, monkeypatch):
    """Issue 26: after the error line of a save on a full disk, orbax's writer threads went on logging
    'Future exception was never retrieved' / absl tracebacks (13-121 lines in 10 of 21 trials)."""
    from etils import epath

    state, _ = states
    absl, asyncio_logger = logging.getLogger("absl"), logging.getLogger("asyncio")
    level = absl.level

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
            ckpt.save(0, state, {})
            monkeypatch.setattr(epath.Path, "write_text", full)
            with pytest.raises(OSError, match=r"could not write the checkpoint of step 1 .*No space left") as caught:
                ckpt.save(1, state, {})
            assert caught.value.errno == errno.ENOSPC
        assert not absl.isEnabledFor(logging.ERROR)  # the writer threads' own tracebacks
        late = logging.LogRecord("asyncio", logging.ERROR, __file__, 0, "Future exception was never retrieved",
                                 None, None)
        assert not asyncio_logger.filter(late)
        other = logging.LogRecord("asyncio", logging.ERROR, __file__, 0, "something else", None, None)
        assert asyncio_logger.filter(other)
    finally:
        absl.setLevel(level)
        asyncio_logger.removeFilter(checkpoint._drop_unretrieved)


def test_a_checkpoint_of_another_tree_or_config_is_a_mismatch_and_nothing_is_moved(tmp_path, states):
    """Issue 26: a code change adding a leaf to the state, or another width, failed the restore of
    every checkpoint alike, and each was renamed broken-<step>-...; a flipped byte is still damage."""
    state, other = states
    directory = str(tmp_path)
    with checkpoint.Checkpointer(directory) as ckpt:
        ckpt.save(4, state, {"config_hash": "abc"})
        ckpt.save(8, other, {"config_hash": "abc"})
    added = state.replace(params=dict(state.params, readout_bias=jnp.zeros((3, 2))))
    wider = state.replace(params={"w": jnp.zeros((3, 4, 6)), "b": jnp.zeros((3, 5))})
    with checkpoint.Checkpointer(directory) as ckpt:
        with pytest.raises(checkpoint.Mismatch, match=r"^checkpoint at step 8 .*the run expects 1 leaves it lacks"
                                                      r" \(.*readout_bias.*\).*nothing was moved"):
            ckpt.restore_latest(added)
        with pytest.raises(checkpoint.Mismatch, match=r"step 8 .*per-model shape \(4, 5\) float32, the run expects"):
            ckpt.restore_latest(wider)
        with pytest.raises(checkpoint.Mismatch, match=r"step 8 .*config hash abc, the run's xyz"):
            ckpt.restore_latest(state, config_hash="xyz")
        assert ckpt.steps() == [4, 8] and sorted(os.listdir(directory)) == ["4", "8"]
        step, _, meta = ckpt.restore_latest(state, config_hash="abc")
        assert step == 8 and meta["tree"] == checkpoint.tree_signature(state)
    flip_a_byte(directory, 8)  # damage, not a mismatch: moved aside, the previous one used
    with checkpoint.Checkpointer(directory) as ckpt:
        step, restored, _ = ckpt.restore_latest(state, config_hash="abc")
    assert step == 4 and [p for p in os.listdir(directory) if p.startswith("broken-8-")]
    chex.assert_trees_all_equal(restored, state)
