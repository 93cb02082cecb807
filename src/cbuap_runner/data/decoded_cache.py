"""A streamed split decoded once: its images as one flat uint8 file, read back row by row (dataset.decoded_cache).

`<cache_dir>/decoded/<key>.u8` holds the rows [N, C, H, W] in listing order (np.memmap(path, np.uint8, "r",
shape=(N, C, H, W)) reads it), `<key>.json` what they are. The key is the split's file key (every file's path, label,
size, modification and change times: folder.files_key) and the decoding settings, so a file rewritten, added or
removed, or another resize/crop, makes another cache. Rows are read with pread, not mapped, so an evaluation's
memory stays a batch's worth however large the file. One job of a sweep builds it while the others wait (lease.py);
the file appears complete or not at all. A file that could not be decoded while building (dataset.bad_files=skip)
is a zero row listed as bad and is skipped again when read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..io import atomic_path
from ..lease import slot_lease
from ..progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class DecodedCache:
    """The decoded rows of one split at `path` (a .u8 file), each of `shape`; `bad`: rows that could not be decoded."""

    path: Path
    count: int
    shape: tuple[int, int, int]
    bad: dict[int, str] = field(default_factory=dict)
    _fd: int | None = field(default=None, repr=False)
    _pid: int | None = field(default=None, repr=False)

    @property
    def row_bytes(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def read(self, row: int) -> torch.Tensor:
        if row in self.bad:
            raise UserError(self.bad[row])
        if self._fd is None or self._pid != os.getpid():  # one descriptor per process (workers are forked)
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, self.row_bytes, row * self.row_bytes)
        if len(data) != self.row_bytes:
            raise UserError(f"{self.path}: decoded cache is shorter than its {self.count} rows; delete it to rebuild")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(self.shape)

    def __getstate__(self):  # workers open their own descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}


def _load(meta: Path, data: Path) -> DecodedCache | None:
    """The complete cache described by `meta`, or None when absent or unreadable."""
    try:
        info = json.loads(meta.read_text())
        cache = DecodedCache(data, int(info["count"]), tuple(info["shape"]), {int(k): v for k, v in info["bad"].items()})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not data.is_file() or data.stat().st_size != cache.count * cache.row_bytes:
        return None
    return cache


def decoded_cache(source, cache_dir: Path, key: str) -> DecodedCache:
    """The decoded cache of `source` (a stream.FolderFiles: all its rows, in listing order) under `key`, built
    first if missing."""
    folder = Path(cache_dir).expanduser() / "decoded"
    meta, data = folder / f"{key}.json", folder / f"{key}.u8"
    with slot_lease(folder / key, ready=lambda: _load(meta, data) is not None, log_wait=log.info) as mine:
        if mine:
            _build(source, meta, data)
    cache = _load(meta, data)
    if cache is None:
        raise UserError(f"{data}: the decoded cache could not be written; check cache_dir's free space")
    return cache


def _build(source, meta: Path, data: Path) -> None:
    """Decode every row of `source` (a stream.FolderFiles without a cache) in order into `data`, then write `meta`."""
    from torch.utils.data import DataLoader

    from .stream import _collate, _own_seed, _Rows

    log.info("decoding %d images once into %s", len(source), data)
    c, h, w = source.decoder.shape
    batches = [list(range(i, min(i + 256, len(source)))) for i in range(0, len(source), 256)]
    loader = DataLoader(_Rows(source), batch_sampler=batches, num_workers=min(source.workers, len(batches)),
                        collate_fn=_collate, generator=_own_seed())
    bad: dict[int, str] = {}
    with atomic_path(data) as tmp, open(tmp, "wb") as out:
        for (rows, images, errors), batch in zip(progress_bar(loader, desc=f"decoding into {data.name}",
                                                              total=len(batches)), batches):
            for row, why in errors:
                source.bad.meet(source.path(row), why)  # refused here, or kept as a bad row
                bad[row] = why
            decoded = dict(zip(rows.tolist(), images if images is not None else []))
            for row in batch:  # the loader keeps the batch's order; a bad row is written as zeros
                out.write(decoded[row].numpy().tobytes() if row in decoded else bytes(c * h * w))
    with atomic_path(meta) as tmp:
        Path(tmp).write_text(json.dumps({"count": len(source), "shape": [c, h, w],
                                         "bad": {str(k): v for k, v in bad.items()}}))
