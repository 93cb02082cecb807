"""ImageFolder layout (`<root>/<split>/<class>/<image>`) decoded once into uint8 tensors and cached.

Images are taken as they are (each must have the dataset's size), or, with a `Preprocessing` (the dataset's
`resize`/`crop` keys, else what the model declares), of any size and aspect: the shorter side resized to `resize`
(antialiased, with `interpolation`), then centre-cropped to `crop`, as torchvision's classification presets do.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from ..io import atomic_path, torch_save
from ..progress import progress_bar

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Preprocessing:
    """How image files become the network's input: shorter side resized to `resize` (None: kept), centre-cropped
    to `crop`."""

    resize: Optional[int]
    crop: int
    interpolation: str = "bilinear"  # nearest | bilinear | bicubic

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            image = TF.resize(image, [self.resize], interpolation=InterpolationMode(self.interpolation),
                              antialias=True)
        return TF.center_crop(image, [self.crop, self.crop])


JPEG_MAGIC = b"\xff\xd8"  # decode_jpeg decodes these as decode_image does, at less cost per file
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def has_folder_layout(root: Path) -> bool:
    """True when `root/train` and `root/test` both hold class folders."""
    return all((root / s).is_dir() and any(p.is_dir() for p in (root / s).iterdir()) for s in ("train", "test"))


@dataclass(frozen=True)
class FolderListing:
    """One split of a folder dataset: the classes (their index is the label), one name per class, every image file
    with its label in a deterministic order, and the folder the files are keyed and fingerprinted under."""

    classes: list[str]
    names: list[str]
    files: list[tuple[Path, int]]
    split_dir: Path


def folder_listing(root: Path, split: str) -> FolderListing:
    """`<root>/<split>/<class>/<image>`: classes are the sorted folder names, and name themselves."""
    classes, files = list_images(root / split)
    return FolderListing(classes, classes, files, root / split)


def list_images(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (file, label) pairs."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files = [
        (f, label)
        for label, name in enumerate(classes)
        for f in sorted((split_dir / name).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    return classes, files


def files_key(split_dir: Path, files: list[tuple[Path, int]], channels: int, size: int,
               pre: Optional[Preprocessing]) -> str:
    """The decoded tensors' key: every file's absolute path, label, size, modification and change times (a file
    rewritten in place with its mtime restored still changes its ctime), then the decode settings."""
    h = hashlib.sha256(f"{split_dir.resolve()}|{channels}|{size}|{pre}\n".encode())
    for path, label in files:
        st = path.stat()
        h.update(f"{path.name}|{path.parent.name}|{label}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}\n".encode())
    return h.hexdigest()[:24]


def unreadable(path: Path) -> Optional[str]:
    """Why `path` is not an image (its header read, the pixels not decoded), or None: a quick look at every file of
    a large split before hours are spent on it."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 (the header names the size)
    except (OSError, ValueError, Image.DecompressionBombError) as ex:
        return f"not an image ({type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else 'unreadable'})"
    return None


def unreadable_files(files: list[tuple[Path, int]], record: Path) -> dict[str, str]:
    """{path: why} of the files that are no images (their headers read), kept in `record` (a file keyed by the
    files' sizes and times) so that a split is looked over once, not on every run."""
    try:
        return dict(json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    found = {}
    for path, _ in progress_bar(files, desc=f"checking {path_parent(files)}"):
        why = unreadable(path)
        if why is not None:
            found[str(path)] = why
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps(found))
    return found


def decode_file(path: Path, channels: int, size: int, pre: Optional[Preprocessing]) -> torch.Tensor:
    """One image file as uint8 [channels, size, size] (with `pre`: resized and cropped to pre.crop); a file that cannot
    be decoded, or that has another size, is one UserError naming its path."""
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    size = size if pre is None else pre.crop
    try:
        data = read_file(str(path))
        image = decode_jpeg(data, mode=mode) if bytes(data[:2].tolist()) == JPEG_MAGIC else decode_image(data, mode=mode)
    except RuntimeError as ex:
        raise UserError(f"{path}: cannot decode image ({str(ex).splitlines()[0]}); remove or replace the file, or set "
                        "dataset.bad_files=skip") from ex
    if pre is not None:
        if pre.resize is None and min(image.shape[1:]) < pre.crop:
            raise UserError(f"{path}: image is {tuple(image.shape[1:])}, smaller than dataset.crop={pre.crop}; "
                            "set dataset.resize as well")
        image = pre.apply(image)
    if image.shape[1:] != (size, size):
        raise UserError(f"{path}: image is {tuple(image.shape[1:])}, dataset.image_size expects {size}x{size}")
    return image


def _decode(files: list[tuple[Path, int]], channels: int, size: int, pre: Optional[Preprocessing], progress: bool,
            meet: Callable[[str, str], None]) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """The images that decode (uint8), their positions in `files`, and (path, why) of those that do not, each of which
    `meet` refuses or lets pass (dataset.bad_files)."""
    size = size if pre is None else pre.crop
    out = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    kept, skipped = [], []
    for i, (path, _) in enumerate(progress_bar(files, desc=f"decoding {path_parent(files)}", enabled=progress)):
        try:
            out[len(kept)] = decode_file(path, channels, size, pre)
        except UserError as ex:
            meet(str(path), str(ex))
            skipped.append((str(path), str(ex)))
            continue
        kept.append(i)
    return out[:len(kept)], kept, skipped


def path_parent(files: list[tuple[Path, int]]) -> str:
    return str(files[0][0].parent.parent) if files else ""


def load_folder_split(listing: FolderListing, channels: int, size: int, cache_dir: Path, progress: bool,
                      pre: Optional[Preprocessing], meet: Callable[[str, str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (or load from cache) one listed split: uint8 [N,C,H,W], int64 [N]; files that cannot be decoded are
    refused or left out by `meet` (dataset.bad_files), also when the decoded split comes from the cache."""
    split_dir, files = listing.split_dir, listing.files
    cache = cache_dir / "folders" / f"{files_key(split_dir, files, channels, size, pre)}.pt"
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            x, y, skipped = blob["x"], blob["y"], blob.get("skipped", [])
        except Exception as ex:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", cache, ex)
        else:
            for path, why in skipped:
                meet(path, why)
            return x, y
    log.info("decoding %d images under %s (cached afterwards in %s)", len(files), split_dir, cache)
    x, kept, skipped = _decode(files, channels, size, pre, progress, meet)
    y = torch.tensor([files[i][1] for i in kept], dtype=torch.long)
    torch_save({"x": x, "y": y, "classes": listing.classes, "skipped": skipped}, cache)
    return x, y
