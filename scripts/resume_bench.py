"""What a relaunch costs after a crash in the middle of a crafting pass: prints the wall times of three runs of one
`task=pipeline` job (a natural model, then SGD-UAP and DeepFool UAP): uninterrupted, killed with SIGKILL at the N-th
DeepFool run of DeepFool UAP's crafting, and relaunched in the killed run's directory (resume=auto), and whether the
relaunched perturbations equal the uninterrupted ones (torch.equal).

    python scripts/resume_bench.py --out outputs/resume_bench            # Fashion-MNIST, small_cnn
    python scripts/resume_bench.py --kill-at 400 -- dataset=synthetic     # extra overrides after --
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

JOB = ["task=pipeline", "model=small_cnn", "training=natural", "training.epochs=1", "pipeline.attacks=[sgd_uap,uap]",
       "attack.passes=2", "attack.crafting_images=2000", "checkpoint_images=500", "progress=off", "device=cpu",
       "logger.name=local"]

# run the command line, SIGKILLing this process at the N-th DeepFool run (no handler runs, nothing is flushed)
KILL_AT_DEEPFOOL_RUN = r"""
import os, signal, sys
import cbuap_runner.attacks.deepfool_uap as df
n, run, calls = int(os.environ["KILL_AT"]), df._run_deepfool, [0]
def run_or_die(*a, **k):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return run(*a, **k)
df._run_deepfool = run_or_die
from cbuap_runner.__main__ import main
main()
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"{' '.join(cmd[:3])} ...: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/resume_bench", help="a fresh directory for the runs and the cache")
    p.add_argument("--kill-at", type=int, default=1300, help="the DeepFool run at which the second run is killed")
    p.add_argument("overrides", nargs="*", help="more overrides (after --)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        sys.exit(f"--out {out}: exists; give a fresh directory")
    job = [*JOB, f"cache_dir={out / 'cache'}", *args.overrides]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "KILL_AT": str(args.kill_at)}
    reference, run = out / "uninterrupted", out / "run"
    walls = {"uninterrupted": timed([sys.executable, "-m", "cbuap_runner", *job, f"hydra.run.dir={reference}"], env)}
    walls["killed"] = timed([sys.executable, "-c", KILL_AT_DEEPFOOL_RUN, *job, f"hydra.run.dir={run}"], env)
    if walls["killed"][1] != -signal.SIGKILL:
        sys.exit(f"--kill-at {args.kill_at}: the run ended before its DeepFool run {args.kill_at}; give a lower one")
    state = torch.load(run / "crafting" / "uap.pt", weights_only=True)["loop"]
    walls["relaunched"] = timed([sys.executable, "-m", "cbuap_runner", *job, f"hydra.run.dir={run}"], env)
    equal = {name: torch.equal(*(torch.load(d / f"perturbation_{name}.pt", weights_only=True)["delta"]
                                 for d in (reference, run))) for name in ("sgd_uap", "uap")}
    record = {"walls_seconds": {k: round(v[0], 2) for k, v in walls.items()}, "delta_equal": equal,
              "killed_at_deepfool_run": args.kill_at,
              "state_at_kill": {"passes": state["passes"], "position": state["position"]}, "job": job}
    print(json.dumps(record, indent=2))
    return 0 if all(equal.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
