"""Shared test helpers: the repository root, the common overrides, composing the real config, running the real CLI.

A plain module (import it as `from helpers import ...`); conftest.py keeps only the fixtures built on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

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
