"""Shared fixtures: compose the real config, and run the real command line in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cbuap_runner.__main__ import CONF_DIR
from cbuap_runner.job import to_config
from cbuap_runner.schema import register_configs

REPO = Path(__file__).resolve().parents[1]

# One thread per process: the suite runs subprocesses and parallel sweep jobs on small machines, where
# several multi-threaded BLAS pools competing for the same cores slow every step down by orders of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
FAST = ["progress=off", "device=cpu"]
TINY = ["dataset=synthetic", "model=small_cnn", "training.epochs=1", "training.batch_size=32", "attack.passes=2",
        "attack.crafting_images=64", "attack.batch_size=32", "eval.num_images=64"]


def compose_config(overrides: list[str]):
    """The composed DictConfig for `overrides`, as the app would see it."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture
def validated():
    return lambda overrides: to_config(compose_config(overrides))


def run_cli(args: list[str], run_dir: Path, cache_dir: Path | None = None, timeout: int = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m cbuap_runner ARGS` with its run directory and caches under the test's tmp_path."""
    cache_dir = cache_dir or run_dir.parent / "cache"
    cmd = [sys.executable, "-m", "cbuap_runner", *FAST, f"hydra.run.dir={run_dir}", f"cache_dir={cache_dir}", *args]
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture
def cli(tmp_path):
    """Run the CLI in tmp_path/run (one fresh directory per call)."""
    counter = {"n": 0}

    def _run(args: list[str], **kw) -> tuple[subprocess.CompletedProcess, Path]:
        counter["n"] += 1
        run_dir = tmp_path / f"run{counter['n']}"
        return run_cli(args, run_dir, cache_dir=tmp_path / "cache", **kw), run_dir

    return _run
