"""guard: stop signals (a request, then an immediate stop on a second Ctrl-C) and the lock helper."""
import os
import signal

import pytest

from launch import local as launch_local
from rhm_jax import guard, lock


def test_a_first_signal_is_a_request_a_second_ctrl_c_stops_at_once_and_handlers_come_back():
    before = {s: signal.getsignal(s) for s in guard.STOP_SIGNALS}
    with guard.StopSignals(guard.STOP_SIGNALS) as stopping:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM stays a request
        assert stopping.received == signal.SIGTERM
    with guard.StopSignals(guard.STOP_SIGNALS) as stopping:
        os.kill(os.getpid(), signal.SIGINT)
        assert stopping.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in guard.STOP_SIGNALS} == before


def test_a_second_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch_local.runner, "run", second_ctrl_c)
    assert launch_local.main(["--config", "sweeps/smoke.py", "--workdir", "unused", "--no_progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stopped at once by a second Ctrl-C") and "Traceback" not in "".join(err)


def test_lock_workdir_with_force_moves_the_old_directory_and_holds_both(tmp_path):
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write("{}")
    with guard.contextlib.ExitStack() as stack:
        guard.lock_workdir(workdir, True, stack)
        backup = [n for n in os.listdir(tmp_path) if n.startswith("run.bak-")]
        assert len(backup) == 1 and os.listdir(workdir) == [lock.LOCK_FILE]
        for held in (workdir, str(tmp_path / backup[0])):  # a --force elsewhere is refused on either
            with pytest.raises(lock.Busy):
                with lock.hold(held):
                    pass
