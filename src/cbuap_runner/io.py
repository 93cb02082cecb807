"""Crash-safe file output: everything is written to a temporary file and renamed into place."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's own 0600 would hide results from others


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON object as a line and flush it to disk."""
    with open(path, "a") as fh:
        fh.write(json.dumps(obj, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def safe_torch_load(path: str | os.PathLike, key: str, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True; every failure becomes one UserError naming `key` and the path."""
    import torch

    from .errors import UserError

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{key}={str(path)!r}: is a directory; give the .pt file inside it")
    if not p.is_file():
        raise UserError(f"{key}={str(path)!r}: no such file; check the path")
    if p.stat().st_size == 0:
        raise UserError(f"{key}={str(path)!r}: the file is empty (an interrupted copy?); give a complete file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the one-line error says it all
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as ex:  # torch raises many types for foreign, truncated or unsafe files
        if "global" in str(ex).lower():  # the weights-only unpickler met a class or function reference
            reason = "refused: it holds Python objects that are not plain data (it could run code when loaded)"
        else:
            reason = "not a readable torch file (truncated, corrupt or of another format); give a file this tool wrote"
        raise UserError(f"{key}={str(path)!r}: {reason}") from ex
