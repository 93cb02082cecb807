"""Shared fixtures: compose the real config, and run the real command line in a temporary directory.

The helpers and constants they use live in helpers.py; test files import those from there, never from here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from cbuap_runner.job import run_job, to_config
from helpers import FAST, compose_config, run_cli

# One thread per process, here and in every subprocess (they inherit the environment): the suite runs subprocesses
# and parallel sweep jobs on small machines, where several multi-threaded BLAS pools competing for the same cores
# slow every step down by orders of magnitude, and one thread count everywhere keeps CPU results bit-identical
# between an in-process run and a subprocess.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture
def validated():
    return lambda overrides: to_config(compose_config(overrides))


@pytest.fixture
def cli(tmp_path):
    """Run the CLI in tmp_path/run (one fresh directory per call)."""
    counter = {"n": 0}

    def _run(args: list[str], **kw) -> tuple[subprocess.CompletedProcess, Path]:
        counter["n"] += 1
        run_dir = tmp_path / f"run{counter['n']}"
        return run_cli(args, run_dir, cache_dir=tmp_path / "cache", **kw), run_dir

    return _run


@pytest.fixture
def job(compose_cfg, tmp_path):
    """run_job in-process, as the CLI would call it (caches under tmp_path)."""

    def _run(run_dir: Path, overrides: list[str]):
        overrides = [*FAST, f"cache_dir={tmp_path / 'cache'}", *overrides]
        return run_job(compose_cfg(overrides), run_dir, overrides, False, None)

    return _run
