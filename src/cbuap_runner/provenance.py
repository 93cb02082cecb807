"""What decided a result: the data's fingerprint, the weights key, file hashes and the code version.

One notion serves the model cache, the resume check, `model.pt`, `perturbation.pt` and `run_summary.json`:

- **Data fingerprint**: SHA-256 over the splits as read, before the seeded validation carve (which the config and
  the seed decide), and over the preprocessing that produced them. Resident splits are hashed over their tensors
  (dtype, shape, bytes), so the same data under another root or from another source format (IDX files, a
  torchvision copy, a folder) gives the same fingerprint and other data under the same root does not. A split
  too large to read per run is fingerprinted over its file list instead (`files_fingerprint`: each file's path
  relative to the split, its size and modification time, plus the preprocessing). Generated data
  (`dataset=synthetic`) is fingerprinted over its generator's settings.
- **Weights key**: every configuration key that can change trained weights (the dataset's settings but its root,
  download flag and class names; the architecture; what the defence reads, `amp` included; the seed; the hash of
  the weights in `training.init_checkpoint`, not its path) plus the data fingerprint. Execution settings (`device`, `progress`,
  `cache_dir`, `logger`, `resume`, `deterministic`, `model.channels_last`, `model.compile`) are not in it.
- **Identity**: the digest of a key with the seed left out, shared by the seeds of one experiment; tables merge
  runs only when their identities agree. A network fine-tuned from `training.init_checkpoint` starts from another
  network per seed: where that file names its own (seed-free) identity, the key carries it (`init_identity`) and
  the identity reads it in place of the starting weights' hash, so the seeds of one fine-tuning experiment from
  the seeds of one earlier experiment share it; a file without one keeps its weights' hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

# dataset settings that cannot change what is read: where it lies, whether it may be fetched, display names
NOT_DATA_KEYS = ("root", "download", "classes")
SYNTHETIC_GENERATOR = "make_synthetic/1"  # bump when data/synthetic.py draws other images for the same settings


def digest(obj: Any) -> str:
    """SHA-256 (hex) of a JSON-serialisable value, key order aside."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tensors_fingerprint(tensors: Sequence[torch.Tensor], preprocessing: Any = None) -> str:
    """SHA-256 over each tensor's dtype, shape and bytes, then the preprocessing that produced them."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    h.update(json.dumps(preprocessing, sort_keys=True, default=str).encode())
    return h.hexdigest()


def files_fingerprint(split_dir: Path, files: Iterable[Path], preprocessing: Any = None) -> str:
    """SHA-256 over (path relative to split_dir, size, mtime in ns) of each file, then the preprocessing: a
    fingerprint of a split that is not read whole, independent of where the split lies."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{Path(f).relative_to(split_dir).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(preprocessing, sort_keys=True, default=str).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's names and tensors: the weights, whatever file (or file name) holds them."""
    names = sorted(state)
    return tensors_fingerprint([state[n] for n in names], names)


def without_seed(key: dict[str, Any]) -> dict[str, Any]:
    """The key with the seed left out, and the starting weights' hash where the key names their identity."""
    out = {k: v for k, v in key.items() if k != "seed"}
    if "init_identity" in out:
        out["training"] = {k: v for k, v in out["training"].items() if k != "init_checkpoint"}
    return out


def identity(key: dict[str, Any]) -> str:
    """The digest of `key` with the seed left out: what the runs of one experiment share."""
    return digest(without_seed(key))


def weights_key(cfg: Any, data_fingerprint: str) -> dict[str, Any]:
    """What decides the weights that cfg's training would produce, as plain data (the cache's and resume's key)."""
    from .schema import to_plain

    dataset = {k: v for k, v in to_plain(cfg.dataset).items() if k not in NOT_DATA_KEYS}
    training = to_plain(cfg.training)  # the defence's schema holds only what it reads
    start = None  # the starting network's identity, where its file names one
    if training.get("init_checkpoint"):
        from .models import read_model_file

        blob = read_model_file(training["init_checkpoint"], "training.init_checkpoint")
        training["init_checkpoint"] = f"weights:{state_dict_fingerprint(blob['state_dict'])}"
        start = (blob.get("provenance") or {}).get("identity")
    key = {"data": data_fingerprint, "dataset": dataset, "model": {"name": cfg.model.name}, "training": training,
           "seed": cfg.seed}
    if start:
        key["init_identity"] = start  # the starting network's experiment, the same for each of its seeds
    return key


def model_file_provenance(path: str, blob: dict[str, Any], source: str) -> dict[str, Any]:
    """What a record says of the model it used: its file's hash, the hash of its weights (the same weights in
    files of other code versions share it), and what trained it where the file says so (a file without that gets
    the hash of its weights as its identity)."""
    sha = file_sha256(Path(path).expanduser())
    stored = blob.get("provenance") or {}
    fingerprint = state_dict_fingerprint(blob["state_dict"]) if "state_dict" in blob else None
    weights = f"weights:{fingerprint}" if fingerprint else f"sha256:{sha}"
    return {"identity": stored.get("identity") or weights, "sha256": sha, "weights_fingerprint": fingerprint,
            "path": str(path), "source": source, "digest": stored.get("digest"), "trained_by": stored.get("code"),
            "data": stored.get("data")}
