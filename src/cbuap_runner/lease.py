"""One trainer per model-cache slot: jobs of a sweep that ask for the same slot at once wait for one of them to train it.

The lease is `<slot_dir>/lease.json`, created with O_CREAT|O_EXCL (atomic on local disks and NFSv3+), naming its holder:
{"host", "pid", "pidns", "token", "taken", "renewed"} (times are time.time()). The holder renews it every `renew_every`
seconds and removes it when it leaves; a waiter then finds the slot filled, or takes the lease and trains itself.

A lease is stale, and is broken, when
- its holder is on this host (same hostname and pid namespace) and its pid no longer exists: at once;
- it was not renewed for `stale_after` seconds (the only test for other hosts, whose pids we cannot check);
- it cannot be read (half-written, corrupt) and the file's mtime is older than `stale_after`.
Times from other nodes are compared with ours, and NFS clients may see a renewal late (attribute caching), so
stale_after must exceed the nodes' clock skew plus renew_every plus that delay: the defaults leave minutes for it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterator

LEASE_FILE = "lease.json"
_HOST = socket.gethostname()


def _pid_namespace() -> str:
    # Containers sharing a hostname (e.g. docker --network host) do not share pids: only compare pids within one namespace.
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _new_record(token: str) -> dict:
    now = time.time()
    return {"host": _HOST, "pid": os.getpid(), "pidns": _pid_namespace(), "token": token, "taken": now, "renewed": now}


def _read(path: Path) -> dict | None:
    """The lease at `path`, or None when it is unreadable or malformed; FileNotFoundError when there is none."""
    try:
        lease = json.loads(path.read_text())
        pid, renewed = lease["pid"], lease["renewed"]
        if isinstance(lease["host"], str) and type(pid) is int and 0 < pid < 2**31 and isinstance(renewed, (int, float)):
            return lease
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    return True


def _is_stale(path: Path, stale_after: float) -> bool:
    lease = _read(path)
    if lease is None:
        return time.time() - path.stat().st_mtime > stale_after
    if lease["host"] == _HOST and lease.get("pidns") == _pid_namespace() and not _pid_alive(lease["pid"]):
        return True
    return time.time() - lease["renewed"] > stale_after  # also covers a pid reused after a reboot


def _remove_if(path: Path, still_wanted: Callable[[Path], bool]) -> None:
    """Remove the lease if `still_wanted(moved_file)`, race-free: only one rename to a tombstone can succeed, and a
    lease taken by another job between our check and the rename is judged again and put back."""
    tomb = path.with_name(f".{path.name}.{uuid.uuid4().hex}.removed")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return  # someone else removed it first
    try:
        if not still_wanted(tomb):
            os.link(tomb, path)  # put it back, never over a lease created meanwhile
    except OSError:
        pass
    finally:
        tomb.unlink(missing_ok=True)


def _owned_by(token: str) -> Callable[[Path], bool]:
    return lambda path: (_read(path) or {}).get("token") == token


def _try_create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


def _renew(path: Path, record: dict, every: float, stop: threading.Event) -> None:
    tmp = path.with_name(f".{path.name}.{record['token']}.tmp")
    try:
        while not stop.wait(every):
            try:
                tmp.write_text(json.dumps({**record, "renewed": time.time()}))
                current = _read(path)  # read just before the replace, to keep the window for a lost update small
            except FileNotFoundError:
                current = {}
            except OSError:
                continue  # e.g. an NFS hiccup: try again next round
            if current is not None and current.get("token") != record["token"]:
                warnings.warn(f"lost the lease {path} (judged stale and broken?): another job may train this slot too", RuntimeWarning)
                return
            if current is not None:  # else unreadable for now: try again next round
                with suppress(OSError):
                    os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def slot_lease(slot_dir: str | os.PathLike, ready: Callable[[], bool], *, renew_every: float = 30.0, stale_after: float = 300.0,
               poll: float = 2.0, log_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Yields True when this process holds the slot's lease (it must produce the slot's file, then leave the block),
    False when `ready()` became true while waiting (another job produced it: load it)."""
    # stale_after must also exceed the nodes' clock skew plus renew_every (see above): keep the margin wide.
    if stale_after < 2 * renew_every:
        raise ValueError(f"stale_after ({stale_after}s) must be at least 2 * renew_every ({renew_every}s)")
    path = Path(slot_dir) / LEASE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record, logged_holder = _new_record(uuid.uuid4().hex), None
    while True:
        if ready():
            yield False
            return
        if _try_create(path, record):
            break
        try:
            if _is_stale(path, stale_after):
                _remove_if(path, lambda tomb: _is_stale(tomb, stale_after))
                continue
            holder = _read(path) or {}
        except FileNotFoundError:
            continue  # released meanwhile: check ready() and try again
        if log_wait and holder.get("token", "?") != logged_holder:  # once per holder, not on every poll
            logged_holder = holder.get("token", "?")
            log_wait(f"waiting for {path.parent}: held by host {holder.get('host', '?')} pid {holder.get('pid', '?')}")
        time.sleep(poll)

    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(path, record, renew_every, stop), name=f"lease-renewer {path}", daemon=True)
    try:
        renewer.start()
        if ready():  # filled between our check and the create: the previous holder succeeded
            yield False
        else:
            yield True
    finally:
        stop.set()
        renewer.join()
        _remove_if(path, _owned_by(record["token"]))
