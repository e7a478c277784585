"""TensorBoard event files: one directory per model, train and eval scalars, purge on resume."""
import os
import struct
import sys

import pytest

from rhm_jax import events

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")

GRID = [dict(index=0, P=16, seed=0), dict(index=5, P=64, seed=1)]


def scalars(directory):
    """(tag, step, value) of every scalar in the event files of a directory, in file order."""
    out = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):  # TFRecord: length (8), its crc (4), payload, payload crc (4)
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 16 + length
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_each_model_gets_its_own_train_and_eval_scalars(tmp_path):
    writer = events.EventWriter(str(tmp_path), GRID)
    writer.train([dict(model=0, step=4, loss=0.5), dict(model=5, step=4, loss=0.25), dict(model=5, step=8, loss=None)])
    writer.evaluation([dict(model=5, step=8, P=64, seed=1, validity_l1=0.75, copies=0.0, diverged=False)])
    writer.close()
    root = tmp_path / events.EVENTS_DIR
    assert sorted(os.listdir(root)) == ["model_0000_P16_seed0", "model_0005_P64_seed1"]
    assert scalars(root / "model_0000_P16_seed0") == [("train/loss", 4, 0.5)]
    assert sorted(scalars(root / "model_0005_P64_seed1")) == [
        ("eval/copies", 8, 0.0), ("eval/validity_l1", 8, 0.75), ("train/loss", 4, 0.25)]


def test_missing_tensorboardx_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import now raises ImportError
    with pytest.raises(ValueError, match=r"needs tensorboardX: pip install 'rhm_jax\[tensorboard\]'"):
        events.check_available()
