"""torchrun: two CPU processes (gloo) train and craft as one job, with one run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import mixed_folder, run_cli, stream_args


def torchrun_two_ranks(args: list[str], tmp_path: Path, port: int) -> tuple[dict, Path]:
    """Run `python -m cbuap_runner ARGS` on 2 gloo ranks in tmp_path; (run summary, its one run directory)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "cbuap_runner", *args, "progress=off", "device=cpu", f"cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = [p for p in (tmp_path / "outputs" / "runs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    summary = json.loads((run_dirs[0] / "run_summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    return summary, run_dirs[0]


@pytest.mark.e2e
def test_two_ranks_agree_and_share_one_run_directory(tmp_path):
    summary, run_dir = torchrun_two_ranks(
        ["task=attack", "attack=sgd_uap", "dataset=synthetic", "training.epochs=2", "training.batch_size=32",
         "attack.crafting_images=64", "attack.passes=2", "eval.num_images=64"], tmp_path, 29533)
    assert summary["metrics"]["ddp_delta_identical"] is True
    model = torch.load(run_dir / "model.pt", weights_only=True)
    assert model["metrics"]["ddp_weights_identical"] is True
    assert (run_dir / "perturbation.pt").is_file()
    assert summary["metrics"]["craft_images_processed"] == 64 * 2  # 2 passes over 64 images, split over 2 ranks


@pytest.mark.e2e
@pytest.mark.slow
def test_two_ranks_refresh_the_cb_uat_pool_every_iteration_identically(tmp_path):
    """refresh_unit=iter refreshes inside the loss, where the model is the DDP wrapper: the refresh must craft on the
    network inside it. Each refresh checks that both ranks hold the same pool (it raises otherwise)."""
    summary, run_dir = torchrun_two_ranks(
        ["task=train", "dataset=synthetic", "training=cb_uat", "training.pool.refresh_unit=iter", "training.pool.refresh_every=2",
         "training.pool.refresh_steps=2", "training.pool.size=2", "training.epochs=1", "training.batch_size=32",
         "training.adversary.batch_size=32", "eval.num_images=64"], tmp_path, 29534)
    assert summary["metrics"]["ddp_weights_identical"] is True
    adversary = torch.load(run_dir / "checkpoint.pt", weights_only=True)["adversary"]
    steps = 192 // 32  # (synthetic_size 256 - val_size 64) / batch 32, one epoch
    assert adversary["refreshes"] == steps // 2 and adversary["pool"].abs().max() > 0


@pytest.mark.e2e
@pytest.mark.slow
def test_two_ranks_count_every_streamed_test_image_once(tmp_path):
    """A streamed folder whose test split (an odd count) does not divide over two ranks: each rank reads its share,
    no image is repeated to even them out, and the summed counts equal a single process's."""
    root = mixed_folder(tmp_path / "data", per_class=5)
    (root / "test" / "c0" / "4.png").unlink()  # 19 test images
    common = stream_args(root, "task=evaluate", "model=small_cnn", "training.epochs=1", "training.batch_size=8",
                  "dataset.stream=always", "dataset.workers=1", "eval.batch_size=4", "dataset.val_size=4")
    summary, _ = torchrun_two_ranks(common, tmp_path, 29535)
    metrics = summary["metrics"]
    assert metrics["num_images"] == 19 and summary["provenance"]["data"]["streamed"] == ["train", "test"]
    single = run_cli([*common, f"model.checkpoint={next((tmp_path / 'cache' / 'models').glob('*/model.pt'))}"],
                     tmp_path / "single", cache_dir=tmp_path / "cache")
    assert single.returncode == 0, single.stderr[-2000:]
    alone = json.loads((tmp_path / "single" / "run_summary.json").read_text())["metrics"]
    assert (alone["num_images"], alone["clean_acc"], alone["per_class_acc"]) == (
        19, metrics["clean_acc"], metrics["per_class_acc"])
