"""Datasets as in-memory uint8 tensors, batched and augmented with tensor ops on the device."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..provenance import SYNTHETIC_GENERATOR, digest, tensors_fingerprint
from ..schema import DatasetConfig
from .folder import Preprocessing, has_folder_layout
from .sources import DATASETS, DatasetSource, load_split  # noqa: F401  (the dataset registry)
from .synthetic import make_synthetic

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split: uint8 images [N,C,H,W] and int64 labels [N], on some device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, index: torch.Tensor) -> "Split":
        index = index.to(self.y.device)
        return Split(self.x[index], self.y[index])

    def float_x(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.x.float().div_(255)


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


def _check_shape(split: Split, cfg: DatasetConfig, size: int, what: str) -> None:
    expected = (cfg.channels, size, size)
    if tuple(split.x.shape[1:]) != expected:
        raise UserError(
            f"dataset.root={cfg.root!r}: {what} images are {tuple(split.x.shape[1:])} but dataset={cfg.name} "
            f"expects {expected}; set dataset.channels / dataset.image_size"
        )
    if split.y.numel() and int(split.y.max()) >= cfg.num_classes:
        top = int(split.y.max())
        raise UserError(f"dataset.num_classes={cfg.num_classes}: the {what} split has {top + 1} classes (labels up to "
                        f"{top}); set dataset.num_classes={top + 1}")


def folder_preprocessing(cfg: DatasetConfig, declared: Optional[Preprocessing]) -> Optional[Preprocessing]:
    """How image folders are decoded: the dataset's resize/crop where set, else what the model declares."""
    return Preprocessing(cfg.resize, cfg.crop, cfg.interpolation) if cfg.crop is not None else declared


def load_data(cfg: DatasetConfig, cache_dir: str, seed: int, device: torch.device,
              declared: Optional[Preprocessing] = None) -> DataBundle:
    """Load both splits into memory (uint8) and move them to `device` whole; image folders decoded with the
    dataset's resize/crop, else with `declared` (the model's preprocessing)."""
    size, pre = cfg.image_size, None
    if DATASETS[cfg.name].synthetic:
        shape = (cfg.num_classes, cfg.channels, cfg.image_size)
        train = Split(*make_synthetic(cfg.synthetic_size, *shape, seed=seed))
        test = Split(*make_synthetic(max(cfg.synthetic_size // 4, cfg.num_classes), *shape, seed=seed + 1))
        names = None
        fingerprint = digest({"generator": SYNTHETIC_GENERATOR, "size": cfg.synthetic_size, "shape": shape})
    else:
        root, cache = Path(cfg.root).expanduser(), Path(cache_dir).expanduser()
        pre = folder_preprocessing(cfg, declared) if has_folder_layout(root) else None
        if declared is not None and pre is None:
            log.warning("the model declares %s; dataset=%s is read as tensors of %dx%d as they are (only image folders "
                        "are resized and cropped)", declared, cfg.name, cfg.image_size, cfg.image_size)
        size = size if pre is None else pre.crop
        read = [load_split(cfg, split, cache, pre) for split in ("train", "test")]
        train, test = Split(read[0][0], read[0][1]), Split(read[1][0], read[1][1])
        names = read[0][2]
        fingerprint = tensors_fingerprint([train.x, train.y, test.x, test.y], _preprocessing(cfg, pre))
    preprocessing = {"decode": "generated"} if DATASETS[cfg.name].synthetic else _preprocessing(cfg, pre)
    for split, what in ((train, "train"), (test, "test")):
        _check_shape(split, cfg, size, what)
    train, val = split_validation(train, cfg.val_size, seed)
    if cfg.train_subset is not None:
        train = train.subset(balanced_subset(train.y, cfg.train_subset, seed))
    log.info("dataset %s: %d train / %d validation / %d test images of shape %s", cfg.name, len(train), len(val),
             len(test), tuple(train.x.shape[1:]))
    names = names or (list(cfg.classes) if cfg.classes else [str(k) for k in range(cfg.num_classes)])
    return DataBundle(train.to(device), val.to(device), test.to(device), cfg.num_classes,
                      (cfg.channels, size, size), names, fingerprint, preprocessing)


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


def split_validation(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """(the rest, a seeded class-balanced validation sample of `val_size` images) of the training split."""
    if val_size >= len(train):
        raise UserError(f"dataset.val_size={val_size}: the training split has only {len(train)} images; "
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


def batches(split: Split, batch_size: int, *, shuffle: bool = False, generator: Optional[torch.Generator] = None,
            crop_padding: int = 0, hflip: bool = False, drop_last: bool = False, rank: int = 0, world: int = 1
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float [0,1] batches of a device-resident split; shuffling and augmentation use `generator`.

    With world > 1 every global batch is split over the ranks, each taking every world-th sample.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.y.device) if shuffle else None
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        if order is None and world == 1:
            xb, yb = split.x[start:start + batch_size], split.y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size] if order is not None else torch.arange(
                start, min(start + batch_size, n), device=split.y.device)
            idx = idx[rank::world]
            xb, yb = split.x[idx], split.y[idx]
        xb = xb.float().div_(255)
        if crop_padding or hflip:
            xb = augment(xb, crop_padding, hflip, generator)
        yield xb, yb


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)
