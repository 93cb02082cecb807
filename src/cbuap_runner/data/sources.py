"""Where each dataset's images come from: a folder layout, local files, or a torchvision download."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from .folder import has_folder_layout, load_folder_split
from .idx import load_idx_split

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
Split = tuple[torch.Tensor, torch.Tensor]


def _tv_mnist_like(cls_name: str) -> Callable[[Path, bool, bool], Split]:
    def load(root: Path, train: bool, download: bool) -> Split:
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(str(root), train=train, download=download)
        return ds.data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets).long()

    return load


def _tv_cifar(cls_name: str) -> Callable[[Path, bool, bool], Split]:
    def load(root: Path, train: bool, download: bool) -> Split:
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(str(root), train=train, download=download)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets).long()

    return load


def _tv_svhn(root: Path, train: bool, download: bool) -> Split:
    import torchvision.datasets as tvd

    ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
    return torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels).long()


TORCHVISION = {
    "fashion_mnist": _tv_mnist_like("FashionMNIST"),
    "mnist": _tv_mnist_like("MNIST"),
    "cifar10": _tv_cifar("CIFAR10"),
    "cifar100": _tv_cifar("CIFAR100"),
    "svhn": _tv_svhn,
}


def _local_idx(name: str, root: Path, split: str) -> Split | None:
    """IDX files directly under root, or (Fashion-MNIST) Debian's dataset-fashion-mnist package."""
    places = [root, root / "raw"]
    if name == "fashion_mnist":
        places += [root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]
    if name == "mnist":
        places += [root / "MNIST" / "raw"]
    for place in places:
        found = load_idx_split(place, split)
        if found is not None:
            log.info("%s %s split read from IDX files in %s", name, split, place)
            return found
    return None


def _torchvision(name: str, root: Path, split: str, download: bool) -> Split:
    loader = TORCHVISION.get(name)
    if loader is None:
        raise UserError(f"dataset.root={str(root)!r}: no {split}/<class>/ image folders there")
    try:
        return loader(root, split == "train", False)
    except (RuntimeError, FileNotFoundError, OSError):
        pass
    if not download:
        raise UserError(
            f"dataset.root={str(root)!r}: no {name} data there and dataset.download=false; "
            "put the data there (torchvision layout or <split>/<class>/ folders) or allow the download"
        )
    try:
        return loader(root, split == "train", True)
    except Exception as ex:  # network errors come in many types
        raise UserError(
            f"dataset.root={str(root)!r}: no {name} data there and the download failed "
            f"({type(ex).__name__}); put the data there or run where a network is available"
        ) from ex


def load_split(name: str, root: Path, split: str, download: bool, channels: int, size: int,
               cache_dir: Path, progress: bool) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """One split as uint8 [N,C,H,W] and int64 [N], plus class names where the source has them."""
    if has_folder_layout(root):
        return load_folder_split(root, split, channels, size, cache_dir, progress)
    if name == "image_folder":
        raise UserError(f"dataset.root={str(root)!r}: expected train/<class>/ and test/<class>/ image folders there")
    local = _local_idx(name, root, split) if name in ("fashion_mnist", "mnist") else None
    if local is not None:
        return local[0], local[1], None
    x, y = _torchvision(name, root, split, download)
    return x, y, None
