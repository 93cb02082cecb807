"""Shared test helpers: the repository root, the common overrides, composing the real config, running the real CLI.

A plain module (import it as `from helpers import ...`); conftest.py keeps only the fixtures built on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torchvision.io import encode_jpeg, encode_png

from cbuap_runner.__main__ import CONF_DIR
from cbuap_runner.schema import register_configs

REPO = Path(__file__).resolve().parents[1]

FAST = ["progress=off", "device=cpu"]
TINY = ["dataset=synthetic", "model=small_cnn", "training.epochs=1", "training.batch_size=32", "attack.passes=2",
        "attack.crafting_images=64", "attack.batch_size=32", "eval.num_images=64"]


def compose_config(overrides: list[str]):
    """The composed DictConfig for `overrides`, as the app would see it."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_cli(args: list[str], run_dir: Path, cache_dir: Path | None = None, timeout: int = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m cbuap_runner ARGS` with its run directory and caches under the test's tmp_path."""
    cache_dir = cache_dir or run_dir.parent / "cache"
    cmd = [sys.executable, "-m", "cbuap_runner", *FAST, f"hydra.run.dir={run_dir}", f"cache_dir={cache_dir}", *args]
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def random_image_folder(root: Path, classes: int, per_class: int, *, seed: int = 0, channels: int = 3,
                        size: int | None = 16, fmt: str = "png") -> Path:
    """<root>/{train,test}/c<k>/<i>.png|jpg of random images drawn from `seed`: size x size, or of mixed sizes (36-70
    px, any aspect) where size is None; fmt "png", "jpg" or "mixed" (PNG and JPEG alternating)."""
    g = torch.Generator().manual_seed(seed)
    for split in ("train", "test"):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = (size, size) if size else (int(v) for v in torch.randint(36, 71, (2,), generator=g))
                image = torch.randint(0, 256, (channels, h, w), generator=g, dtype=torch.uint8)
                jpeg = fmt == "jpg" or (fmt == "mixed" and i % 2 == 1)
                data = encode_jpeg(image, quality=90) if jpeg else encode_png(image)
                (folder / f"{i}.{'jpg' if jpeg else 'png'}").write_bytes(data.numpy().tobytes())
    return root


# a small folder dataset of mixed-size JPEG and PNG files (streamed and resident reading are compared on it)
CLASSES, PER_CLASS = 4, 12


def mixed_folder(root: Path, seed: int = 0, per_class: int = PER_CLASS) -> Path:
    return random_image_folder(root, CLASSES, per_class, seed=seed, size=None, fmt="mixed")


def stream_args(root: Path, *extra: str) -> list[str]:
    return ["dataset=image_folder", f"dataset.root={root}", f"dataset.num_classes={CLASSES}", "dataset.resize=36",
            "dataset.crop=32", "dataset.val_size=8", "dataset.download=false", *extra]
