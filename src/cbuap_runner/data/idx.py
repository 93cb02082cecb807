"""Reader for the IDX format of (Fashion-)MNIST, gzipped (Debian's files) or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> torch.Tensor:
    """Decode one IDX file (optionally .gz) into a tensor of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as ex:
        raise UserError(f"{path}: cannot read IDX file ({ex}); re-install or re-download it") from ex
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number); replace it or re-download it "
                        "(dataset.download=true)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"{path}: truncated IDX file ({len(raw) - header} of {expected} data bytes); replace it or "
                        "re-download it (dataset.download=true)")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


def find_idx_split(root: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of a split under `root`, gzipped or not, if present."""
    prefix = "train" if split == "train" else "t10k"
    for suffix in (".gz", ""):
        images = root / f"{prefix}-images-idx3-ubyte{suffix}"
        labels = root / f"{prefix}-labels-idx1-ubyte{suffix}"
        if images.is_file() and labels.is_file():
            return images, labels
    return None


def load_idx_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Images as uint8 [N,1,H,W] and labels as int64 [N], or None when the files are absent."""
    found = find_idx_split(root, split)
    if found is None:
        return None
    images, labels = (read_idx(p) for p in found)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise UserError(f"{found[0]}: images {tuple(images.shape)} do not match labels {tuple(labels.shape)}")
    return images.unsqueeze(1).contiguous(), labels.long()
