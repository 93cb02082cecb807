"""Image folders read as they are needed: a split too large to hold (or that the user asks to stream) is a list of
files and their labels, decoded and preprocessed in DataLoader worker processes batch by batch.

`StreamedSplit` answers what `data.Split` answers (labels, length, subsets, batches of given indices, the rank's share
for evaluation, a resident copy of a bounded subset), so attacks, metrics and defences do not ask which one they
have. Batches come in the order they are asked for (the seeded order of data.batches), so a streamed pass sees
exactly the images a resident pass of the same split sees, decoded by the same `folder.decode_file`.

A file that cannot be decoded is refused in one line naming it (dataset.bad_files=refuse), or dropped from its batch
and counted (dataset.bad_files=skip; `BadFiles` keeps the list for the run's record). With a decoded cache
(data/decoded_cache.py) the images are read back as uint8 rows instead of decoded again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..errors import UserError
from .folder import Preprocessing, decode_file

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images [B,C,H,W], int64 labels [B]
Index = slice | torch.Tensor  # a batch's positions in a split: a range, or any positions


@dataclass(frozen=True)
class FileDecoder:
    """One file to uint8 [C, size, size]: decoded to `channels`, resized and cropped by `pre` (picklable, for the
    workers)."""

    channels: int
    size: int  # the image size when pre is None; pre.crop otherwise
    pre: Optional[Preprocessing] = None

    @property
    def shape(self) -> tuple[int, int, int]:
        side = self.size if self.pre is None else self.pre.crop
        return (self.channels, side, side)

    def __call__(self, path: str) -> torch.Tensor:
        return decode_file(Path(path), self.channels, self.size, self.pre)


@dataclass
class BadFiles:
    """The files a run skipped (dataset.bad_files=skip), each once, in the order met."""

    policy: str = "refuse"  # refuse | skip
    paths: list[str] = field(default_factory=list)

    def meet(self, path: str, why: str) -> None:
        """A file that cannot be read: refused in one line, or counted."""
        if self.policy != "skip":
            raise UserError(why)
        if path not in self.paths:
            self.paths.append(path)

    def record(self) -> dict:
        return {"policy": self.policy, "skipped": len(self.paths), "skipped_files": self.paths[:100]}


@dataclass(frozen=True)
class FolderFiles:
    """Every file of one split as listed (the rows a decoded cache stores), how each is decoded and read."""

    files: np.ndarray  # the paths as fixed-width bytes: one buffer, so forked workers share it (no per-item refcounts)
    decoder: FileDecoder
    workers: int = 0
    bad: BadFiles = field(default_factory=BadFiles)
    cache: Optional["object"] = None  # a decoded_cache.DecodedCache holding every row, or None

    @staticmethod
    def paths(files: Sequence[Path | str]) -> np.ndarray:
        return np.array([os.fsencode(str(f)) for f in files], dtype=bytes)

    def path(self, row: int) -> str:
        return os.fsdecode(self.files[row])

    def __len__(self) -> int:
        return len(self.files)


class _Rows(Dataset):
    """Row i of a split's files as (i, image or None, the reason it could not be read)."""

    def __init__(self, source: FolderFiles):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, row: int):
        source = self.source
        try:
            image = source.cache.read(row) if source.cache is not None else source.decoder(source.path(row))
        except UserError as ex:
            return row, None, str(ex)
        return row, image, None


def _collate(items):
    rows = [row for row, image, _ in items if image is not None]
    images = [image for _, image, _ in items if image is not None]
    errors = [(row, why) for row, image, why in items if image is None]
    return torch.tensor(rows, dtype=torch.long), (_stack(images) if images else None), errors


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """One batch tensor; in a worker, stacked straight into shared memory (the main process then maps it, no copy)."""
    if get_worker_info() is None:
        return torch.stack(images)
    return torch.stack(images, out=torch.empty((len(images), *images[0].shape), dtype=images[0].dtype).share_memory_())


def _own_seed() -> torch.Generator:
    """The loader's own generator: starting workers draws a seed, which must not come from torch's global generator
    (that would shift every later random draw of the run, so streamed and resident runs would differ)."""
    return torch.Generator().manual_seed(0)


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass
class StreamedSplit:
    """Some rows of a split's files with their labels; images are decoded when a batch asks for them."""

    source: FolderFiles
    rows: torch.Tensor  # int64: this split's rows of source.files
    y: torch.Tensor  # int64 labels, on the CPU
    device: torch.device = torch.device("cpu")  # where batches and resident copies go

    streamed = True

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.source.decoder.shape

    def subset(self, index: torch.Tensor) -> "StreamedSplit":
        index = index.cpu()
        return StreamedSplit(self.source, self.rows[index], self.y[index], self.device)

    def take(self, batches: Sequence[Index]) -> Iterator[Batch]:
        """uint8 images and labels of each batch of positions, in order, on self.device; files that cannot be read
        are refused, or dropped from their batch (dataset.bad_files)."""
        positions = [torch.arange(*index.indices(len(self))) if isinstance(index, slice) else index.cpu()
                     for index in batches]
        rows = [self.rows[p].tolist() for p in positions]
        loader = DataLoader(_Rows(self.source), batch_sampler=rows, num_workers=min(self.source.workers, len(rows)),
                            collate_fn=_collate, pin_memory=self.device.type == "cuda", generator=_own_seed())
        for (_, images, errors), where in zip(loader, positions):  # the loader keeps the batches' order
            labels = self.y[where]
            if errors:
                for row, why in errors:
                    self.source.bad.meet(self.source.path(row), why)
                unread = {row for row, _ in errors}
                labels = labels[torch.tensor([r not in unread for r in self.rows[where].tolist()])]
            if images is not None:
                yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def resident(self):
        """The images of these rows decoded into one uint8 tensor (a data.Split): for bounded sets only (crafting
        set, validation split)."""
        from . import Split

        parts = list(self.take(chunks(len(self), 256)))
        if len(self) and not parts:
            raise UserError(f"{Path(self.source.path(int(self.rows[0]))).parent}: none of the requested images could be "
                            "read")
        if not parts:
            return Split(torch.empty((0, *self.shape), dtype=torch.uint8, device=self.device),
                         self.y.to(self.device))
        return Split(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))

    def shard(self, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        """This rank's share (every world-th image), in batches: every image counted once over the ranks."""
        mine = torch.arange(len(self))[rank::world]
        return self.take([mine[i:i + batch_size] for i in range(0, mine.shape[0], batch_size)])


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` covering range(n)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
