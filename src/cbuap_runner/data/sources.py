"""Where each dataset's images come from: a folder layout, local files, or a torchvision download."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from ..errors import UserError
from ..progress import progress_enabled
from ..provenance import digest, files_fingerprint, tensors_fingerprint
from ..schema import DatasetConfig
from .decoded_cache import decoded_cache
from .folder import (
    FolderListing,
    Preprocessing,
    files_key,
    folder_listing,
    has_folder_layout,
    load_folder_split,
    unreadable_files,
)
from .idx import load_idx_split
from .imagenet import imagenet_split
from .synthetic import SyntheticConfig

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
Arrays = tuple[torch.Tensor, torch.Tensor]
Loader = Callable[[Path, bool, bool], Arrays]  # (root, train, download) -> split
Lister = Callable[[Path, str], FolderListing]  # (root, split) -> the split's files, labels and class names


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
    listing: Lister | None = None  # a folder layout of its own (root, split) -> FolderListing, in place of <split>/<class>/


# the only list of dataset names (`dataset=` options); a new dataset adds an entry and conf/dataset/<name>.yaml
DATASETS: dict[str, DatasetSource] = {
    "fashion_mnist": DatasetSource(_tv_mnist_like("FashionMNIST"),
                                   (".", "raw", "FashionMNIST/raw", str(DEBIAN_FASHION_MNIST))),
    "mnist": DatasetSource(_tv_mnist_like("MNIST"), (".", "raw", "MNIST/raw")),
    "cifar10": DatasetSource(_tv_cifar("CIFAR10")),
    "cifar100": DatasetSource(_tv_cifar("CIFAR100")),
    "svhn": DatasetSource(_tv_svhn),
    "image_folder": DatasetSource(),
    "imagenet": DatasetSource(listing=imagenet_split),
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


def reads_folders(cfg: DatasetConfig) -> bool:
    """Whether the dataset is read from image folders (its own layout, or <root>/<split>/<class>/)."""
    source = DATASETS[cfg.name]
    return not source.synthetic and (source.listing is not None or has_folder_layout(Path(cfg.root).expanduser()))


def load_split(cfg: DatasetConfig, split: str) -> Arrays:
    """One split of a dataset that is not read from folders, as uint8 [N,C,H,W] and int64 [N]."""
    name, root, download = cfg.name, Path(cfg.root).expanduser(), cfg.download
    source = DATASETS[name]
    local = _local_idx(name, root, split, source.idx_dirs)
    if local is not None:
        return local
    if source.download is None:
        raise UserError(f"dataset.root={str(root)!r}: expected train/<class>/ and test/<class>/ image folders there")
    return _torchvision(name, source.download, root, split, download)


class Splits(NamedTuple):
    """What read_splits found: each split with its fingerprint when streamed (None when held in memory), the class
    names (folder names, or None) and, for image folders, the files that could not be read (data.BadFiles)."""

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
    if not reads_folders(cfg):  # held as read; a model's preprocessing resizes each batch as it is taken
        train, test = (Split(*load_split(cfg, split), _fits(cfg, pre)) for split in ("train", "test"))
        return Splits((train, None), (test, None), None, None)
    lister = DATASETS[cfg.name].listing or folder_listing
    listings = {split: lister(root, split) for split in ("train", "test")}
    _check_classes(root, listings)
    out = {}
    for split, listing in listings.items():
        if _streams(cfg, len(listing.files), pre):
            out[split] = _streamed(cfg, listing, pre, cache_dir, bad, device)
        else:
            x, y = load_folder_split(listing, cfg.channels, cfg.image_size, cache_dir, progress_enabled(), pre,
                                     bad.meet)
            out[split] = (Split(x, y), None)
    return Splits(out["train"], out["test"], listings["train"].names, bad)


def _fits(cfg: DatasetConfig, pre: Preprocessing | None) -> Preprocessing | None:
    """`pre` for a tensor dataset of dataset.image_size images: refused when it would crop more than there is."""
    if pre is not None and pre.resize is None and cfg.image_size < pre.crop:
        raise UserError(f"dataset.crop={pre.crop}: dataset={cfg.name}'s images are {cfg.image_size}x{cfg.image_size}, "
                        "smaller than the crop; set dataset.resize as well")
    return pre


def check_streamable(cfg: DatasetConfig, folders: bool) -> None:
    """dataset.stream=always is for image folders; other sources are read whole."""
    if cfg.stream == "always" and not folders:
        raise UserError(f"dataset.stream=always: only image folders are streamed; dataset={cfg.name} is read as "
                        "tensors from its source: set dataset.stream=auto")


def _check_classes(root: Path, listings: dict[str, FolderListing]) -> None:
    """Every class folder holds images, and both splits have the same classes (labels are folder ranks)."""
    for listing in listings.values():
        where = listing.split_dir
        if not listing.files:
            raise UserError(f"{where}: no images in its class folders; put the images in {where}/<class>/")
        held = {label for _, label in listing.files}
        empty = [name for label, name in enumerate(listing.classes) if label not in held]
        if empty and (where / empty[0]).is_dir():
            raise UserError(f"{where / empty[0]}: class folder holds no images ({len(empty)} empty); add images "
                            "or remove the folder")
    train, test = listings["train"].classes, listings["test"].classes
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


def _streamed(cfg: DatasetConfig, listing: FolderListing, pre: Preprocessing | None, cache_dir: Path, bad,
              device) -> tuple[Any, str]:
    """A split streamed from its files (those that cannot be read are refused or skipped first: dataset.bad_files),
    with its fingerprint: the files' paths, sizes and times, their labels and the preprocessing."""
    from .stream import FileDecoder, FolderFiles, StreamedSplit, default_workers

    split_dir = listing.split_dir
    key = files_key(split_dir, listing.files, cfg.channels, cfg.image_size, pre)
    found = unreadable_files(listing.files, cache_dir / "folders" / f"{key}.unreadable.json")
    for path, why in found.items():
        bad.meet(path, f"{path}: {why}; remove or replace the file, or set dataset.bad_files=skip")
    kept = [(path, label) for path, label in listing.files if str(path) not in found]
    decoder = FileDecoder(cfg.channels, cfg.image_size, pre)
    workers = default_workers() if cfg.workers is None else cfg.workers
    source = FolderFiles(FolderFiles.paths([p for p, _ in kept]), decoder, workers, bad)
    if cfg.decoded_cache:
        source = FolderFiles(source.files, decoder, workers, bad, decoded_cache(source, cache_dir, key))
    y = torch.tensor([label for _, label in kept], dtype=torch.long)
    fingerprint = digest({"files": files_fingerprint(split_dir, [p for p, _ in kept]), "labels": tensors_fingerprint([y]),
                          "preprocessing": str(pre)})
    log.info("%s: %d images streamed (%s, %d workers%s)", split_dir, len(kept), decoder.shape, workers,
             ", decoded cache" if cfg.decoded_cache else "")
    return StreamedSplit(source, torch.arange(len(kept)), y, device), fingerprint
