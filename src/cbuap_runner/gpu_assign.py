"""GPU of a multirun job: local launchers (basic, joblib) assign none, so job n takes GPU n mod count."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def assign_gpu(job_num: int | None, device: str) -> str:
    """The device string that multirun job `job_num` should use.

    `device=auto` (or a bare `cuda`) with more than one visible CUDA device becomes `cuda:<job_num mod count>`,
    a round-robin by job number (not by load: with more parallel jobs than GPUs, several share one). Any other
    device, a single visible GPU (e.g. one per SLURM job), no job number, or a torchrun process (which takes its
    GPU from LOCAL_RANK) leaves `device` unchanged.
    """
    if job_num is None or device not in ("auto", "cuda"):
        return device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return device
    count = torch.cuda.device_count()
    if count <= 1:
        return device
    chosen = f"cuda:{int(job_num) % count}"
    log.info("multirun job %d of a local sweep: device=%s -> %s (%d GPUs visible)", job_num, device, chosen, count)
    return chosen
