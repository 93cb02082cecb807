"""Provenance recorded with every result: git commit, package versions, seeds."""

from __future__ import annotations

import functools
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the source tree this package runs from (or of the working directory), else 'unknown'."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
            if out.returncode == 0:
                dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                return out.stdout.strip() + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for pkg in ("cbuap-runner", "torch", "torchvision", "hydra-core", "omegaconf", "wandb"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return found


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name}: no CUDA device here; use device=auto or device=cpu")
    return torch.device(name)
