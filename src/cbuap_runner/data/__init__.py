"""Datasets as splits of uint8 images: held in memory (`Split`) or streamed from image folders (`stream.StreamedSplit`),
batched and augmented with tensor ops on the device.

Both kinds answer the same questions (labels `y`, length, `subset`, `take` for batches of given positions, `shard`
for a rank's share of an evaluation, `resident` for a bounded set held whole), so nothing above this package asks
which one it has."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..provenance import SYNTHETIC_GENERATOR, digest, tensors_fingerprint
from ..schema import DatasetConfig
from .folder import Preprocessing
from .sources import DATASETS, DatasetSource, check_streamable, read_splits, reads_folders  # noqa: F401  (the registry)
from .stream import BadFiles, Index, StreamedSplit, chunks
from .synthetic import make_synthetic

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split: uint8 images [N,C,H,W] and int64 labels [N], on some device; with `pre`, the images as read (a
    tensor dataset a model wants at another size), resized and cropped batch by batch when they are taken."""

    x: torch.Tensor
    y: torch.Tensor
    pre: Optional[Preprocessing] = None

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.pre)

    streamed = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:]) if self.pre is None else (self.x.shape[1], self.pre.crop, self.pre.crop)

    def subset(self, index: torch.Tensor) -> "Split":
        index = index.to(self.y.device)
        return Split(self.x[index], self.y[index], self.pre)

    def float_x(self) -> torch.Tensor:
        """Images as float32 in [0, 1] (resized and cropped where `pre` says)."""
        return self.resident().x.float().div_(255)

    def resident(self) -> "Split":
        """The split with its images as the network takes them (itself unless `pre` resizes them)."""
        if self.pre is None:
            return self
        return Split(torch.cat([x for x, _ in self.take(chunks(len(self), 256))]) if len(self) else
                     self.x.new_empty((0, *self.shape)), self.y)

    def take(self, batches: Sequence[Index]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """uint8 images and labels of each batch of positions (a slice or an index tensor), in order."""
        for index in batches:
            index = index if isinstance(index, slice) else index.to(self.y.device)
            x = self.x[index]
            yield (x if self.pre is None else self.pre.apply(x)), self.y[index]

    def shard(self, batch_size: int, rank: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share (every world-th image), in batches: every image counted once over the ranks."""
        if world == 1:
            return self.take([slice(i, i + batch_size) for i in range(0, len(self), batch_size)])
        mine = torch.arange(len(self), device=self.y.device)[rank::world]
        return self.take([mine[i:i + batch_size] for i in range(0, mine.shape[0], batch_size)])


AnySplit = Union[Split, StreamedSplit]


@dataclass
class DataBundle:
    """The training split, the validation split carved from it (for every choice), and the test split
    (only ever evaluated)."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str]
    fingerprint: str = ""  # of the splits as read, before the validation carve (provenance.py)
    preprocessing: Optional[dict] = None  # what turned the files into these tensors (_preprocessing)
    bad_files: Optional[BadFiles] = None  # image folders: the files that could not be read (dataset.bad_files)


def balanced_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of a seeded sample of `n` items spread evenly over the classes (never "the first n")."""
    if n >= y.shape[0]:
        return torch.arange(y.shape[0], device=y.device)
    g = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    classes = torch.unique(y_cpu)
    per_class = [torch.nonzero(y_cpu == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(idx.numel(), generator=g)] for idx in per_class]
    base, extra = divmod(n, len(classes))
    order = torch.randperm(len(classes), generator=g)
    chosen = []
    for rank, c in enumerate(order.tolist()):
        chosen.append(per_class[c][: base + (1 if rank < extra else 0)])
    picked = torch.cat(chosen)
    if picked.numel() < n:  # some classes were too small: top up from the rest
        rest = torch.ones(y_cpu.shape[0], dtype=torch.bool)
        rest[picked] = False
        pool = torch.nonzero(rest).flatten()
        picked = torch.cat([picked, pool[torch.randperm(pool.numel(), generator=g)[: n - picked.numel()]]])
    return picked.sort().values.to(y.device)


def _check_shape(split: AnySplit, cfg: DatasetConfig, size: int, what: str) -> None:
    expected = (cfg.channels, size, size)
    if tuple(split.shape) != expected:
        raise UserError(
            f"dataset.root={cfg.root!r}: {what} images are {tuple(split.shape)} but dataset={cfg.name} "
            f"expects {expected}; set dataset.channels / dataset.image_size"
        )
    if split.y.numel() and int(split.y.max()) >= cfg.num_classes:
        top = int(split.y.max())
        raise UserError(f"dataset.num_classes={cfg.num_classes}: the {what} split has {top + 1} classes (labels up to "
                        f"{top}); set dataset.num_classes={top + 1}")


def input_preprocessing(cfg: DatasetConfig, declared: Optional[Preprocessing]) -> Optional[Preprocessing]:
    """How images meet the network: the dataset's resize/crop where set, else what the model declares (image folders
    are decoded so, tensor datasets resized batch by batch)."""
    return Preprocessing(cfg.resize, cfg.crop, cfg.interpolation) if cfg.crop is not None else declared


def load_data(cfg: DatasetConfig, cache_dir: str, seed: int, device: torch.device,
              declared: Optional[Preprocessing] = None) -> DataBundle:
    """Both splits, held in memory on `device` or streamed from their folders (dataset.stream); image folders decoded
    with the dataset's resize/crop, else with `declared` (the model's preprocessing)."""
    size, pre, bad = cfg.image_size, None, None
    check_streamable(cfg, reads_folders(cfg))
    if DATASETS[cfg.name].synthetic:
        shape = (cfg.num_classes, cfg.channels, cfg.image_size)
        train = Split(*make_synthetic(cfg.synthetic_size, *shape, seed=seed))
        test = Split(*make_synthetic(max(cfg.synthetic_size // 4, cfg.num_classes), *shape, seed=seed + 1))
        names = None
        fingerprint = digest({"generator": SYNTHETIC_GENERATOR, "size": cfg.synthetic_size, "shape": shape})
    else:
        cache = Path(cache_dir).expanduser()
        pre = input_preprocessing(cfg, declared)
        size = size if pre is None else pre.crop
        read = read_splits(cfg, cache, pre, device)
        (train, train_fp), (test, test_fp), names, bad = read.train, read.test, read.names, read.bad
        if train.streamed or test.streamed:
            fingerprint = digest({"train": train_fp, "test": test_fp, "preprocessing": _preprocessing(cfg, pre)})
        else:  # hashed over the tensors: the same images from another source or root give the same fingerprint
            fingerprint = tensors_fingerprint([train.x, train.y, test.x, test.y], _preprocessing(cfg, pre))
    preprocessing = {"decode": "generated"} if DATASETS[cfg.name].synthetic else _preprocessing(cfg, pre)
    for split, what in ((train, "train"), (test, "test")):
        _check_shape(split, cfg, size, what)
    val_size = cfg.val_size if cfg.val_per_class is None else cfg.val_per_class * cfg.num_classes
    train, val = split_validation(train, val_size, seed, "dataset.val_size" if cfg.val_per_class is None else
                                  "dataset.val_per_class")
    val = val.resident()  # bounded by dataset.val_size, and read by every choice
    if cfg.train_subset is not None:
        train = train.subset(balanced_subset(train.y, cfg.train_subset, seed))
    log.info("dataset %s: %d train / %d validation / %d test images of shape %s%s", cfg.name, len(train), len(val),
             len(test), tuple(train.shape), _streamed_note(train, test))
    names = names or (list(cfg.classes) if cfg.classes else [str(k) for k in range(cfg.num_classes)])
    return DataBundle(_on(train, device), val.to(device), _on(test, device), cfg.num_classes,
                      (cfg.channels, size, size), names, fingerprint, preprocessing, bad)


def _on(split: AnySplit, device: torch.device) -> AnySplit:
    return split.to(device) if not split.streamed else split


def _streamed_note(train: AnySplit, test: AnySplit) -> str:
    streamed = [what for what, split in (("train", train), ("test", test)) if split.streamed]
    return f" ({' and '.join(streamed)} streamed from their folders)" if streamed else ""


def _preprocessing(cfg: DatasetConfig, pre: Optional[Preprocessing]) -> dict:
    """What turned the files into the tensors: decoded as they are, to this many channels and this size, or
    resized and cropped."""
    if pre is None:
        return {"decode": "as_is", "channels": cfg.channels, "image_size": cfg.image_size}
    return resize_crop_record(cfg.channels, pre)


def resize_crop_record(channels: int, pre: Preprocessing) -> dict:
    """DataBundle.preprocessing of images of `channels` channels resized and cropped by `pre` (also what a
    perturbation file's space.added_after holds)."""
    return {"decode": "resize_crop", "channels": channels, "resize": pre.resize, "crop": pre.crop,
            "interpolation": pre.interpolation}


def split_validation(train: AnySplit, val_size: int, seed: int, key: str = "dataset.val_size"
                     ) -> tuple[AnySplit, AnySplit]:
    """(the rest, a seeded class-balanced validation sample of `val_size` images) of the training split."""
    if val_size >= len(train):
        raise UserError(f"{key}: {val_size} validation images, but the training split has only {len(train)}; "
                        "choose a smaller validation split")
    val_idx = balanced_subset(train.y, val_size, seed)
    keep = torch.ones(len(train), dtype=torch.bool, device=train.y.device)
    keep[val_idx] = False
    return train.subset(torch.nonzero(keep).flatten()), train.subset(val_idx)


def augment(x: torch.Tensor, crop_padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, batched on x's device."""
    n, _, h, w = x.shape
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # [n,h]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # [n,w]
        x = padded[torch.arange(n, device=x.device)[:, None, None, None],
                   torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    if hflip:
        flip = (torch.rand((n,), generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def batches(split: AnySplit, batch_size: int, *, shuffle: bool = False, generator: Optional[torch.Generator] = None,
            crop_padding: int = 0, hflip: bool = False, drop_last: bool = False, rank: int = 0, world: int = 1
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float [0,1] batches of a split (resident or streamed: the same images in the same order); shuffling and
    augmentation use `generator`.

    With world > 1 every global batch is split over the ranks, each taking every world-th sample.
    """
    n = len(split)
    device = split.y.device if not split.streamed else torch.device("cpu")
    order = torch.randperm(n, generator=generator).to(device) if shuffle else None
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    positions: list[Index] = []
    for start in range(0, stop, batch_size):
        if order is None and world == 1:
            positions.append(slice(start, start + batch_size))
            continue
        idx = order[start:start + batch_size] if order is not None else torch.arange(
            start, min(start + batch_size, n), device=device)
        positions.append(idx[rank::world])
    for xb, yb in split.take(positions):
        xb = xb.float().div_(255)
        if crop_padding or hflip:
            xb = augment(xb, crop_padding, hflip, generator)
        yield xb, yb


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)
