"""torch.distributed under torchrun: process group, rank helpers, one shared run directory."""

from __future__ import annotations

import os
import time
from typing import Sequence

import torch
import torch.distributed as tdist


def enabled() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def world_size() -> int:
    return tdist.get_world_size() if enabled() else 1


def rank() -> int:
    return tdist.get_rank() if enabled() else 0


def is_main() -> bool:
    return rank() == 0


def setup_from_env() -> None:
    """Join the process group that torchrun describes (WORLD_SIZE > 1): nccl on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or enabled():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group("nccl")
    else:
        tdist.init_process_group("gloo")


def local_device(device: torch.device) -> torch.device:
    """Each rank's own GPU under torchrun; the configured device otherwise."""
    if enabled() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """Average `t` over the ranks in place (a no-op in a single process)."""
    if enabled():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        t.div_(world_size())
    return t


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's equal share of `index` (the tail that does not divide evenly is dropped)."""
    if not enabled():
        return index
    w = world_size()
    usable = index.shape[0] - index.shape[0] % w
    return index[:usable][rank()::w]


def same_on_all_ranks(tensors: Sequence[torch.Tensor]) -> bool:
    """True when every rank holds bit-identical `tensors` (compared through a checksum gathered on all ranks)."""
    if not enabled():
        return True
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    positions = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    mine = torch.stack([flat.sum(), (flat * positions).sum(), flat.abs().max()])
    gathered = [torch.zeros_like(mine) for _ in range(world_size())]
    tdist.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def shared_run_args(argv: list[str]) -> list[str]:
    """Command-line overrides so that all ranks use one run directory and only rank 0 writes Hydra's files."""
    if not enabled():
        return argv
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        stamp = [time.strftime("%Y-%m-%d/%H-%M-%S") if is_main() else None]
        tdist.broadcast_object_list(stamp, src=0)
        argv = [*argv, f"hydra.run.dir=outputs/runs/{stamp[0]}_ddp"]
    if not is_main():
        argv = [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return argv


def teardown() -> None:
    if enabled():
        tdist.destroy_process_group()


def broadcast_buffers_(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that eval-mode models agree."""
    if enabled():
        for buffer in module.buffers():
            tdist.broadcast(buffer, src=0)


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (the flag itself outside torchrun)."""
    if not enabled():
        return flag
    box = [bool(flag)]
    tdist.broadcast_object_list(box, src=0)
    return bool(box[0])
