"""The model-cache slot lease: one job trains a slot while the others wait, and stale leases never block for good."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from cbuap_runner import lease as lease_mod
from cbuap_runner.lease import LEASE_FILE, slot_lease

SPAWN = multiprocessing.get_context("spawn")  # a clean child, whatever the parent imported
FAST = {"renew_every": 0.05, "stale_after": 0.5, "poll": 0.02}
LIVE = {"renew_every": 0.05, "stale_after": 1.0, "poll": 0.02}  # a wider margin where a live holder must keep its lease


def _model(slot: Path) -> Path:
    return slot / "model.pt"


def _train_or_load(slot: str, go, hold: float) -> None:
    """One sweep job: train the slot if it holds the lease (marker trained-PID), else load it (marker loaded-PID)."""
    slot_dir = Path(slot)
    go.wait()
    with slot_lease(slot_dir, _model(slot_dir).exists, renew_every=0.1, stale_after=2.0, poll=0.02) as held:
        if held:
            time.sleep(hold)
            tmp = slot_dir / f".model.{os.getpid()}.tmp"
            tmp.write_text(str(os.getpid()))
            os.replace(tmp, _model(slot_dir))
        else:
            assert _model(slot_dir).exists()
        (slot_dir / f"{'trained' if held else 'loaded'}-{os.getpid()}").touch()


def _hold_elsewhere(slot: str, acquired, hold: float) -> None:
    """A live holder that looks like another host (so only its renewals keep it): trains for `hold` seconds."""
    lease_mod._HOST = "another-node"
    slot_dir = Path(slot)
    with slot_lease(slot_dir, _model(slot_dir).exists, **LIVE) as held:
        assert held
        acquired.set()
        time.sleep(hold)
        _model(slot_dir).write_text("trained elsewhere")


def _dead_pid() -> int:
    proc = SPAWN.Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join()
    return proc.pid


def _write_lease(slot: Path, **fields) -> dict:
    slot.mkdir(parents=True, exist_ok=True)
    record = {**lease_mod._new_record("not-ours"), **fields}
    tmp = slot / "lease.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, slot / LEASE_FILE)
    return record


def _lease(slot: Path) -> dict:
    return json.loads((slot / LEASE_FILE).read_text())


def _wait_for(condition, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def _deadline(seconds: float):
    """A ready() that turns true after `seconds`: a broken test then fails instead of waiting out a long stale_after."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


@pytest.mark.parametrize("left_behind", [False, True], ids=["free-slot", "dead-holders-lease"])
def test_two_jobs_one_trains_the_other_loads(tmp_path, left_behind):
    slot = tmp_path / "models" / "slot"
    if left_behind:  # both waiters find a stale lease and race to break it
        _write_lease(slot, pid=_dead_pid())
    go = SPAWN.Event()
    jobs = [SPAWN.Process(target=_train_or_load, args=(str(slot), go, 0.3)) for _ in range(2)]
    for job in jobs:
        job.start()
    go.set()
    for job in jobs:
        job.join(timeout=15)
    assert [job.exitcode for job in jobs] == [0, 0]
    trained, loaded = sorted(slot.glob("trained-*")), sorted(slot.glob("loaded-*"))
    assert len(trained) == 1 and len(loaded) == 1
    assert _model(slot).read_text() == trained[0].name.split("-")[1]
    assert not (slot / LEASE_FILE).exists() and not list(slot.glob(f".{LEASE_FILE}*"))  # no tombstone or temp file left


def test_lease_of_a_dead_process_on_this_host_is_broken_at_once(tmp_path):
    dead = _write_lease(tmp_path, pid=_dead_pid())
    with slot_lease(tmp_path, _deadline(3.0), renew_every=10, stale_after=60, poll=0.02) as held:
        assert held
        assert _lease(tmp_path)["pid"] == os.getpid() and _lease(tmp_path)["token"] != dead["token"]


def test_unrenewed_lease_of_another_host_is_taken_after_stale_after(tmp_path):
    # A pid that does not exist here: another host's pid must not be judged by this host's process table.
    written = _write_lease(tmp_path, host="another-node", pid=_dead_pid())
    lines = []
    with slot_lease(tmp_path, _deadline(5.0), **FAST, log_wait=lines.append) as held:
        assert held
        assert time.time() - written["renewed"] >= FAST["stale_after"]
    assert len(lines) == 1
    assert "another-node" in lines[0] and str(written["pid"]) in lines[0] and str(tmp_path) in lines[0]


def test_renewed_lease_is_not_broken_while_its_holder_lives(tmp_path):
    acquired = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_elsewhere, args=(str(tmp_path), acquired, 2 * LIVE["stale_after"]))
    holder.start()
    try:
        assert acquired.wait(10)
        assert _lease(tmp_path)["host"] == "another-node"
        with slot_lease(tmp_path, _model(tmp_path).exists, **LIVE) as held:
            assert not held  # waited for the holder to finish instead of breaking its lease
            assert _model(tmp_path).read_text() == "trained elsewhere"
    finally:
        holder.join(10)
    assert holder.exitcode == 0
    assert not (tmp_path / LEASE_FILE).exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_holder_failing_releases_the_lease_and_the_error_propagates(tmp_path, error):
    with pytest.raises(error):
        with slot_lease(tmp_path, lambda: False, **FAST) as held:
            assert held and (tmp_path / LEASE_FILE).exists()
            raise error
    assert not (tmp_path / LEASE_FILE).exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("lease-renewer")]


def test_waiter_that_judged_a_lease_stale_puts_back_a_fresh_one_found_when_breaking_it(tmp_path, monkeypatch):
    # Another waiter broke the stale lease and took a fresh one between our judgment and our rename to a tombstone.
    real_is_stale, calls = lease_mod._is_stale, []

    def judged_stale_at_first(path, stale_after):
        calls.append(path)
        return len(calls) == 1 or real_is_stale(path, stale_after)

    monkeypatch.setattr(lease_mod, "_is_stale", judged_stale_at_first)
    fresh = _write_lease(tmp_path, host="another-node")
    with slot_lease(tmp_path, _deadline(0.3), **FAST) as held:
        assert held is False
    assert _lease(tmp_path) == fresh and len(calls) >= 2


def test_holder_renews_and_never_removes_a_lease_that_is_no_longer_its_own(tmp_path):
    with pytest.warns(RuntimeWarning, match="lost the lease") as warned:
        with slot_lease(tmp_path, lambda: False, **FAST) as held:
            assert held
            taken = _lease(tmp_path)
            assert _wait_for(lambda: _lease(tmp_path)["renewed"] > taken["renewed"])
            assert {**_lease(tmp_path), "renewed": taken["renewed"]} == taken
            other = _write_lease(tmp_path, host="another-node")  # taken over right after a renewal: the next one is far off
            assert _wait_for(lambda: len(warned) > 0)
    assert _lease(tmp_path) == other


def test_slot_already_filled_yields_false_without_a_lease(tmp_path):
    with slot_lease(tmp_path, lambda: True, **FAST) as held:
        assert held is False and not (tmp_path / LEASE_FILE).exists()
    other = _write_lease(tmp_path, host="another-node")  # even while someone else holds it: no waiting
    with slot_lease(tmp_path, lambda: True, renew_every=10, stale_after=60, poll=30) as held:
        assert held is False
    assert _lease(tmp_path) == other


def test_slot_filled_just_before_the_lease_was_taken_yields_false(tmp_path):
    answers = iter([False, True])  # false at the first check, true right after the create
    with slot_lease(tmp_path, lambda: next(answers), **FAST) as held:
        assert held is False
    assert not (tmp_path / LEASE_FILE).exists()


def test_corrupt_lease_is_broken_once_older_than_stale_after(tmp_path):
    lease_file = tmp_path / LEASE_FILE
    lease_file.write_text('{"host": "half-wri')
    old = time.time() - 10
    os.utime(lease_file, (old, old))
    with slot_lease(tmp_path, _deadline(3.0), renew_every=0.05, stale_after=5.0, poll=0.02) as held:
        assert held

    lease_file.write_text("not json at all")
    written = lease_file.stat().st_mtime
    with slot_lease(tmp_path, _deadline(5.0), **FAST) as held:
        assert held
        assert time.time() - written >= FAST["stale_after"]


@pytest.mark.parametrize("renew_every, stale_after", [(1.0, 1.5), (30.0, 0.0)])
def test_stale_after_must_be_at_least_twice_renew_every(tmp_path, renew_every, stale_after):
    with pytest.raises(ValueError, match="stale_after"):
        with slot_lease(tmp_path / "slot", lambda: False, renew_every=renew_every, stale_after=stale_after):
            pass
    assert not (tmp_path / "slot").exists()
