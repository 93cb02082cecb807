"""Where each dataset's images come from: a folder layout, local files, or a torchvision download."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from ..errors import UserError
from ..progress import progress_bar, progress_enabled
from ..provenance import digest, files_fingerprint, tensors_fingerprint
from ..schema import DatasetConfig
from .decoded_cache import decoded_cache
from .folder import Preprocessing, files_key, has_folder_layout, list_images, load_folder_split, unreadable
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


class Splits(NamedTuple):
    """What read_splits found: each split with its fingerprint when streamed (None when held in memory), the class
    names (folder names, or None) and what streamed splits could not read."""

    train: tuple[Any, str | None]
    test: tuple[Any, str | None]
    names: list[str] | None
    bad: Any


def read_splits(cfg: DatasetConfig, cache_dir: Path, pre: Preprocessing | None, device) -> Splits:
    """Both splits: image folders too large to hold (dataset.stream, dataset.resident_max_gib) are streamed, the
    rest are read into memory (load_split)."""
    from . import Split
    from .stream import BadFiles

    root = Path(cfg.root).expanduser()
    bad = BadFiles(cfg.bad_files)
    if not has_folder_layout(root):
        read = [load_split(cfg, split, cache_dir, pre) for split in ("train", "test")]
        return Splits((Split(*read[0][:2]), None), (Split(*read[1][:2]), None), read[0][2], bad)
    listings = {split: list_images(root / split) for split in ("train", "test")}
    _check_classes(root, listings)
    out = {}
    for split, (classes, files) in listings.items():
        if _streams(cfg, len(files), pre):
            out[split] = _streamed(cfg, root / split, files, pre, cache_dir, bad, device)
        else:
            x, y, _ = load_split(cfg, split, cache_dir, pre)
            out[split] = (Split(x, y), None)
    return Splits(out["train"], out["test"], listings["train"][0], bad)


def check_streamable(cfg: DatasetConfig, folders: bool) -> None:
    """dataset.stream=always is for image folders; other sources are read whole."""
    if cfg.stream == "always" and not folders:
        raise UserError(f"dataset.stream=always: only image folders are streamed; dataset={cfg.name} is read as "
                        "tensors from its source: set dataset.stream=auto")


def _check_classes(root: Path, listings: dict[str, tuple[list[str], list]]) -> None:
    """Every class folder holds images, and both splits have the same classes (labels are folder ranks)."""
    for split, (classes, files) in listings.items():
        if not files:
            raise UserError(f"{root / split}: no images in its class folders; put the images in {root / split}/<class>/")
        held = {label for _, label in files}
        empty = [name for label, name in enumerate(classes) if label not in held]
        if empty:
            raise UserError(f"{root / split / empty[0]}: class folder holds no images ({len(empty)} empty); add images "
                            "or remove the folder")
    train, test = listings["train"][0], listings["test"][0]
    if train != test:
        lacking = sorted(set(train) ^ set(test))
        raise UserError(f"{root}: train/ and test/ have other classes ({len(lacking)} in one only, e.g. "
                        f"{', '.join(lacking[:2])}); both splits need the same class folders")


def _streams(cfg: DatasetConfig, count: int, pre: Preprocessing | None) -> bool:
    """Whether a folder split of `count` images is streamed: dataset.stream, or (auto) its decoded size."""
    if cfg.stream != "auto":
        return cfg.stream == "always"
    side = cfg.image_size if pre is None else pre.crop
    return count * cfg.channels * side * side > cfg.resident_max_gib * 2**30


def _streamed(cfg: DatasetConfig, split_dir: Path, files: list, pre: Preprocessing | None, cache_dir: Path, bad,
              device) -> tuple[Any, str]:
    """A split streamed from its files (those that cannot be read are refused or skipped first: dataset.bad_files),
    with its fingerprint: the files' paths, sizes and times, their labels and the preprocessing."""
    from .stream import FileDecoder, FolderFiles, StreamedSplit, default_workers

    kept = []
    for path, label in progress_bar(files, desc=f"checking {split_dir}", enabled=progress_enabled()):
        why = unreadable(path)
        if why is None:
            kept.append((path, label))
        else:
            bad.meet(str(path), f"{path}: {why}; remove or replace the file, or set dataset.bad_files=skip")
    decoder = FileDecoder(cfg.channels, cfg.image_size, pre)
    workers = default_workers() if cfg.workers is None else cfg.workers
    source = FolderFiles(FolderFiles.paths([p for p, _ in kept]), decoder, workers, bad)
    if cfg.decoded_cache:
        key = files_key(split_dir, kept, cfg.channels, cfg.image_size, pre)
        source = FolderFiles(source.files, decoder, workers, bad, decoded_cache(source, cache_dir, key))
    y = torch.tensor([label for _, label in kept], dtype=torch.long)
    fingerprint = digest({"files": files_fingerprint(split_dir, [p for p, _ in kept]), "labels": tensors_fingerprint([y]),
                          "preprocessing": str(pre)})
    log.info("%s: %d images streamed (%s, %d workers%s)", split_dir, len(kept), decoder.shape, workers,
             ", decoded cache" if cfg.decoded_cache else "")
    return StreamedSplit(source, torch.arange(len(kept)), y, device), fingerprint
