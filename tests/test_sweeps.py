"""Sweeps: launchers, self-launching table and experiment configs, failed jobs in a multirun, GPU assignment."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cbuap_runner.gpu_assign import assign_gpu
from cbuap_runner.job import to_config
from helpers import FAST, REPO, TINY, compose_config

CONF = REPO / "conf"
TABLES = sorted(p.stem for p in (CONF / "table").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
VARIANTS = sorted(p.stem for p in (CONF / "table" / "variant").glob("*.yaml"))
DEFAULTS_ROW = "+table/variant=4_penalty"  # row 4 is cb_uap with its defaults: it may equal another row


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One model cache for the module: every run here needs the same tiny natural model."""
    return tmp_path_factory.mktemp("cache")


def multirun(args: list[str], sweep_dir: Path, cache: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python -m cbuap_runner ARGS` with the sweep directory and caches under the test's tmp_path."""
    flags = [a for a in args if a.startswith("-")]  # argparse wants -m before the overrides
    cmd = [sys.executable, "-m", "cbuap_runner", *flags, *FAST, *TINY, f"hydra.sweep.dir={sweep_dir}",
           f"cache_dir={cache}", *(a for a in args if not a.startswith("-"))]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run_summary.json"))}


def make_table(sweep_dir: Path, kind: str = "attacks") -> list[dict]:
    """Run scripts/make_tables.py on the sweep; the CSV rows it wrote."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(sweep_dir), "--kind", kind,
                           "--no-figures"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    with open(sweep_dir / "tables" / f"{kind}.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- real multiruns


@pytest.mark.e2e
def test_joblib_two_by_two_sweep_completes_and_tabulates(tmp_path):
    """Four parallel jobs need one model: one job trains it while the others wait for it (the cache lease)."""
    sweep = tmp_path / "sweep"
    proc = multirun(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "attack=sgd_uap,cb_uap",
                     "attack.eps=0.05,0.1"], sweep, tmp_path / "fresh_cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = summaries(sweep)
    assert sorted(runs) == ["0", "1", "2", "3"]
    assert all(r["status"] == "completed" for r in runs.values()), {k: r.get("error") for k, r in runs.items()}
    models = [r["provenance"]["model"] for r in runs.values()]
    assert sorted(m["source"] for m in models) == ["cache", "cache", "cache", "trained"]
    assert len({m["sha256"] for m in models}) == 1  # every job attacked the very same weights
    assert {(r["attack"], r["config"]["attack"]["eps"]) for r in runs.values()} == set(
        itertools.product(["sgd_uap", "cb_uap"], [0.05, 0.1]))
    hydra_cfg = OmegaConf.load(sweep / "0" / ".hydra" / "hydra.yaml")
    assert hydra_cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert hydra_cfg.hydra.launcher.n_jobs == 2
    rows = make_table(sweep)
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"completed"}
    assert all(r["fooling_rate_mean"] for r in rows)


@pytest.mark.e2e
def test_a_failed_job_does_not_stop_the_others_and_is_marked(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = multirun(["-m", "attack=sgd_uap", "attack.eps=0.1,-1"], sweep, cache_dir)
    runs = summaries(sweep)
    assert sorted(runs) == ["0", "1"], proc.stderr[-2000:]
    assert runs["0"]["status"] == "completed" and not (sweep / "0" / "error.txt").exists()
    assert runs["1"]["status"] == "failed"
    assert "attack.eps" in (sweep / "1" / "error.txt").read_text()
    rows = {r["attack.eps"]: r for r in make_table(sweep)}
    assert rows["0.1"]["status"] == "completed" and rows["0.1"]["fooling_rate_mean"]
    assert rows["-1.0"]["status"] == "failed" and "attack.eps" in rows["-1.0"]["error"]
    assert rows["-1.0"]["fooling_rate_mean"] == ""


@pytest.mark.e2e
def test_experiment_config_launches_its_own_multirun(tmp_path, cache_dir):
    """`experiment=cb_ablation` without -m: hydra.mode=MULTIRUN in the file launches the ablation rows."""
    sweep = tmp_path / "sweep"
    proc = multirun(["experiment=cb_ablation", "dataset=synthetic"], sweep, cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = summaries(sweep)
    assert len(runs) == len(VARIANTS) and all(r["status"] == "completed" for r in runs.values())
    rows = make_table(sweep, "ablation")
    assert [r["table/variant"] for r in rows] == VARIANTS


def ablation_attack(variant: str) -> dict:
    cfg = compose_config(["attack=cb_uap", f"+table/variant={variant}"])
    return OmegaConf.to_container(cfg.attack.balance, resolve=True)


def test_ablation_rows_add_one_ingredient_each():
    """SGD-UAP; + diversity; + calibration; + penalty; + reweighting (docs/method.md, CB-UAP), each row pinning its
    weights, so that the rows do not move with cb_uap's defaults."""
    sgd, div, cal, pen, rew = (ablation_attack(v) for v in VARIANTS)
    assert (sgd["lambda_div"], sgd["lambda_conf"], sgd["lambda_pen"], sgd["class_reweight"]) == (0, 0, 0, False)
    assert all(row["lambda_pull"] == 0 and row["dro_eta"] is None for row in (sgd, div, cal, pen, rew))
    assert div["lambda_div"] == 0.5 and div["calibration"] == "none"
    assert div["lambda_pen"] == 0 and div["class_reweight"] is False
    assert {k: v for k, v in cal.items() if k != "calibration"} == {k: v for k, v in div.items() if k != "calibration"}
    assert cal["calibration"] == "exclude_true"
    changed = {k for k in pen if pen[k] != cal[k]}
    assert changed == {"lambda_pen", "penalty"} and pen["lambda_pen"] == 0.5
    assert pen["penalty"] == "hinge"
    assert {k for k in rew if rew[k] != pen[k]} == {"class_reweight"} and rew["class_reweight"] is True


# ---------------------------------------------------------------- composition only


def compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cbuap_runner.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def sweep_jobs(params: dict) -> list[list[str]]:
    """The sweep's jobs as override lists (seeds left out: they change nothing that composition checks)."""
    keys = [k for k in params if k != "seed"]
    values = [str(params[k]).split(",") for k in keys]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


@pytest.mark.parametrize("group,name", [("table", t) for t in TABLES] + [("experiment", e) for e in EXPERIMENTS])
def test_every_table_and_experiment_composes_as_a_self_launching_sweep(group, name):
    cfg = compose_with_hydra([f"{group}={name}"])
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = dict(cfg.hydra.sweeper.params)
    assert params, f"{group}={name} sweeps nothing"
    assert cfg.hydra.sweep.dir.startswith(f"outputs/{'tables' if group == 'table' else 'experiments'}/{name}/")
    seen, jobs = set(), [j for j in sweep_jobs(params) if DEFAULTS_ROW not in j]
    for job in sweep_jobs(params):
        dcfg = compose_config([f"{group}={name}", *job])
        cfg_obj = to_config(dcfg)  # schema and start-up checks of every job of the sweep
        resolved = OmegaConf.to_container(dcfg, resolve=True)  # before the seed goes: a path may name it
        resolved.pop("seed")
        if job in jobs:
            seen.add(json.dumps(resolved, sort_keys=True))
        if name.startswith("defences"):
            assert cfg_obj.task == "pipeline" and cfg_obj.attack.name == "cb_uap"
    assert len(seen) == len(jobs), "two jobs of the sweep compose to the same experiment"


def test_small_tables_stay_small():
    for name in (t for t in TABLES if t.endswith("_small")):
        cfg = to_config(compose_config([f"table={name}"]))
        assert cfg.device == "cpu" and cfg.dataset.name == "fashion_mnist"
        assert cfg.dataset.train_subset is not None and cfg.training.epochs <= 3
        assert cfg.eval.num_images is not None and cfg.attack.crafting_images <= 1000


def test_joblib_launcher_defaults():
    cfg = compose_with_hydra(["hydra/launcher=joblib"]).hydra.launcher
    assert cfg._target_.endswith("JoblibLauncher") and cfg.n_jobs == 2 and cfg.backend == "loky"


@pytest.mark.e2e
def test_slurm_launcher_writes_a_requeueable_sbatch_script(tmp_path):
    """Compose hydra/launcher=slurm and let submitit build its sbatch script (a fake srun; nothing submitted)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    script = textwrap.dedent(f"""
        import json, sys, submitit
        from cbuap_runner.__main__ import main

        def capture(self, fn, *args):
            ex = self._executor
            print("RESULT" + json.dumps({{"max_num_timeout": ex.max_num_timeout,
                                          "checkpointable": hasattr(fn, "checkpoint"),
                                          "sbatch": ex._make_submission_file_text("true", "1")}}))
            sys.exit(0)

        submitit.AutoExecutor.map_array = capture
        sys.argv = ["cbuap", "-m", "hydra/launcher=slurm", "seed=0,1", "hydra.sweep.dir={tmp_path / 'sweep'}",
                    "hydra.launcher.partition=gpu", "hydra.launcher.setup=[module load cuda]"]
        main()
    """)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=env, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stderr[-2000:]
    result = json.loads(line[len("RESULT"):])
    assert result["checkpointable"] and result["max_num_timeout"] == 3
    sbatch = result["sbatch"]
    for flag in ("--requeue", "--signal=USR2@120", "--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8",
                 "--mem=32GB", "--nodes=1", "--ntasks-per-node=1", "--time=240"):
        assert f"#SBATCH {flag}" in sbatch, flag
    assert "module load cuda" in sbatch


# ---------------------------------------------------------------- GPU assignment


def test_assign_gpu_round_robin_over_visible_gpus(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [assign_gpu(n, "auto") for n in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert assign_gpu(5, "cuda") == "cuda:1"
    for device in ("cpu", "cuda:2"):
        assert assign_gpu(3, device) == device  # an explicit choice is kept
    assert assign_gpu(None, "auto") == "auto"  # not a multirun job
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert assign_gpu(3, "auto") == "auto"  # torchrun: each rank takes LOCAL_RANK's GPU


@pytest.mark.parametrize("count", [0, 1])
def test_assign_gpu_leaves_one_or_no_gpu_alone(monkeypatch, count):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert assign_gpu(7, "auto") == "auto"
