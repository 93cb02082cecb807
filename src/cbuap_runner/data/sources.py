"""Where each dataset's images come from: a folder layout, local files, or a torchvision download."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from ..progress import progress_enabled
from ..schema import DatasetConfig
from .folder import Preprocessing, has_folder_layout, load_folder_split
from .idx import load_idx_split
from .synthetic import SyntheticConfig

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
Arrays = tuple[torch.Tensor, torch.Tensor]
Loader = Callable[[Path, bool, bool], Arrays]  # (root, train, download) -> split


def _tv_mnist_like(cls_name: str) -> Callable[[Path, bool, bool], Arrays]:
    def load(root: Path, train: bool, download: bool) -> Arrays:
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(str(root), train=train, download=download)
        return ds.data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets).long()

    return load


def _tv_cifar(cls_name: str) -> Callable[[Path, bool, bool], Arrays]:
    def load(root: Path, train: bool, download: bool) -> Arrays:
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(str(root), train=train, download=download)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets).long()

    return load


def _tv_svhn(root: Path, train: bool, download: bool) -> Arrays:
    import torchvision.datasets as tvd

    ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
    return torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels).long()


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's images come from, besides a <split>/<class>/ folder layout under dataset.root (always
    tried first)."""

    download: Loader | None = None  # the torchvision loader (reads root, downloads when allowed); None: folders only
    idx_dirs: tuple[str, ...] = ()  # folders searched for IDX files first (relative to root, or absolute)
    synthetic: bool = False  # generated in memory from the seed: no root at all
    schema: type[DatasetConfig] = DatasetConfig  # the option's keys


# the only list of dataset names (`dataset=` options); a new dataset adds an entry and conf/dataset/<name>.yaml
DATASETS: dict[str, DatasetSource] = {
    "fashion_mnist": DatasetSource(_tv_mnist_like("FashionMNIST"),
                                   (".", "raw", "FashionMNIST/raw", str(DEBIAN_FASHION_MNIST))),
    "mnist": DatasetSource(_tv_mnist_like("MNIST"), (".", "raw", "MNIST/raw")),
    "cifar10": DatasetSource(_tv_cifar("CIFAR10")),
    "cifar100": DatasetSource(_tv_cifar("CIFAR100")),
    "svhn": DatasetSource(_tv_svhn),
    "image_folder": DatasetSource(),
    "synthetic": DatasetSource(synthetic=True, schema=SyntheticConfig),
}


def _local_idx(name: str, root: Path, split: str, dirs: tuple[str, ...]) -> Arrays | None:
    """IDX files in one of `dirs` (relative to root, or absolute)."""
    for place in (root / d for d in dirs):
        found = load_idx_split(place, split)
        if found is not None:
            log.info("%s %s split read from IDX files in %s", name, split, place)
            return found
    return None


def _torchvision(name: str, loader: Loader, root: Path, split: str, download: bool) -> Arrays:
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


def load_split(cfg: DatasetConfig, split: str, cache_dir: Path, pre: Preprocessing | None
               ) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """One split as uint8 [N,C,H,W] and int64 [N], plus class names where the source has them; image folders are
    decoded with `pre` (other sources are read as they are)."""
    name, root, download = cfg.name, Path(cfg.root).expanduser(), cfg.download
    if has_folder_layout(root):
        return load_folder_split(root, split, cfg.channels, cfg.image_size, cache_dir, progress_enabled(), pre)
    if cfg.crop is not None:
        raise UserError(f"dataset.crop={cfg.crop}: resizing and cropping apply to image folders; dataset={name} is "
                        f"read from {root} as tensors of {cfg.image_size}x{cfg.image_size}: drop dataset.resize/crop")
    source = DATASETS[name]
    local = _local_idx(name, root, split, source.idx_dirs)
    if local is not None:
        return local[0], local[1], None
    if source.download is None:
        raise UserError(f"dataset.root={str(root)!r}: expected train/<class>/ and test/<class>/ image folders there")
    x, y = _torchvision(name, source.download, root, split, download)
    return x, y, None
