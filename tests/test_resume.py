"""Crash safety: a training run interrupted anywhere (Ctrl-C in-process, SIGKILL of the real CLI, a multirun killed
and launched again as SLURM requeues it) and resumed with `resume=true` or the default `resume=auto` in the same
directory ends with the same weights, bit for bit on CPU, as a run never interrupted; metrics.jsonl holds each epoch
and each crafting pass once; a non-finite loss stops the run and keeps the last good checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cbuap_runner.networks as networks
from cbuap_runner.attacks import attack_config, craft
from cbuap_runner.attacks.cb_uap import BalanceConfig
from cbuap_runner.attacks.deepfool_uap import DeepFoolConfig
from cbuap_runner.data import load_data
from cbuap_runner.errors import UserError
from cbuap_runner.job import run_job
from cbuap_runner.models import build_model
from cbuap_runner.record import RunRecord
from cbuap_runner.training import Natural
from cbuap_runner.training.loop import NonFiniteError, TrainingRun, fit
from helpers import FAST, REPO, compose_config, run_cli
from toy import K as TOY_K
from toy import train_toy_model

EPOCHS = 3
STEPS = 6  # (synthetic_size 256 - val_size 64) / batch 32
TRAIN = ["task=train", "dataset=synthetic", "model=small_cnn", f"training.epochs={EPOCHS}", "training.batch_size=32",
         "eval.num_images=64", "eval.batch_size=64"]
DEFENCES = {
    "natural": [],
    "uat": [],
    "cb_uat": ["training.pool.refresh_unit=epoch", "training.pool.refresh_every=1",
               "training.pool.refresh_steps=2", "training.pool.size=2", "training.adversary.batch_size=32"],
}



def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


def epoch_rows(run_dir: Path) -> list[int]:
    if not (run_dir / "metrics.jsonl").exists():
        return []
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in rows if "train_loss" in r]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_summary.json").read_text())


def assert_completed(run_dir: Path) -> None:
    assert summary(run_dir)["status"] == "completed"
    assert not (run_dir / "error.txt").exists()
    assert epoch_rows(run_dir) == list(range(1, EPOCHS + 1))
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == EPOCHS


def interrupt_after(monkeypatch, iterations: int) -> None:
    """Make the next training run stop (KeyboardInterrupt, as Ctrl-C) in its iteration `iterations` + 1, before its
    optimiser step: the defence's loss raises once it was asked for `iterations` batches."""
    make = networks.make_adversary

    def interrupting(*args, **kwargs):
        adversary, calls, loss = make(*args, **kwargs), [0], None
        loss = adversary.loss

        def counted(*a, **k):
            if calls[0] == iterations:
                raise KeyboardInterrupt(f"stopped after {iterations} iterations")
            calls[0] += 1
            return loss(*a, **k)

        adversary.loss = counted
        return adversary

    monkeypatch.setattr(networks, "make_adversary", interrupting)


# ---------------------------------------------------------------- in-process interruption


@pytest.mark.parametrize("defence", list(DEFENCES))
def test_interrupted_mid_epoch_resumes_to_identical_weights(defence, job, tmp_path, monkeypatch):
    args = [*TRAIN, f"training={defence}", *DEFENCES[defence]]
    job(tmp_path / "ref", args)

    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after(m, STEPS + 3)  # in the middle of epoch 2
        with pytest.raises(KeyboardInterrupt):
            job(run_dir, args)
    assert summary(run_dir)["status"] == "failed" and (run_dir / "error.txt").is_file()
    assert not (run_dir / "model.pt").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1

    job(run_dir, [*args, "resume=true"])
    assert_completed(run_dir)
    assert_same_weights(tmp_path / "ref" / "model.pt", run_dir / "model.pt")


def test_interrupted_in_first_epoch_resumes_from_the_start(job, tmp_path, monkeypatch):
    """No checkpoint yet: resume=true in the run's directory starts again from epoch 1."""
    job(tmp_path / "ref", TRAIN)
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            job(run_dir, TRAIN)
    assert not (run_dir / "checkpoint.pt").exists()
    job(run_dir, [*TRAIN, "resume=true"])
    assert_completed(run_dir)
    assert_same_weights(tmp_path / "ref" / "model.pt", run_dir / "model.pt")


def test_metrics_rows_past_the_checkpoint_are_not_duplicated(job, tmp_path, monkeypatch):
    """Rows the checkpoint does not cover (a later epoch, a cut line) are dropped; a missing row is restored."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after(m, 2 * STEPS + 3)  # checkpoint after epoch 2, killed in epoch 3
        with pytest.raises(KeyboardInterrupt):
            job(run_dir, TRAIN)
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert epoch_rows(run_dir) == [1, 2]
    # as if killed after appending epoch 3's row (written by hand, marked) and half of another line,
    # and as if epoch 2's row had never been appended (killed between the checkpoint and the append)
    fake = {**json.loads(lines[-1]), "epoch": 3, "step": 3, "fake": True}
    metrics.write_text("\n".join([lines[0], json.dumps(fake), '{"epoch": 4, "train_lo']))

    job(run_dir, [*TRAIN, "resume=true"])
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert not any(r.get("fake") for r in rows)
    assert_completed(run_dir)
    assert summary(run_dir)["train_continued_from"] == 2  # its wall time counts the relaunch only


def test_rewind_metrics_keeps_only_what_the_checkpoint_covers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.9}, {"pass": 1, "objective": 0.3},
            {"epoch": 3, "train_loss": 0.8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 4, "tr')
    assert RunRecord(tmp_path).rewind_metrics(2) == {1, 2}
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]
    assert RunRecord(tmp_path).rewind_metrics(0) == set() and path.read_text() == ""


def test_resumed_run_of_a_finished_training_only_writes_the_model(job, tmp_path):
    """Killed after the last checkpoint: resuming trains nothing more and writes the same model.pt."""
    run_dir = tmp_path / "run"
    job(run_dir, TRAIN)
    first = weights(run_dir / "model.pt")
    killed(run_dir)
    job(run_dir, [*TRAIN, "resume=true"])
    assert_completed(run_dir)
    assert all(torch.equal(first[k], v) for k, v in weights(run_dir / "model.pt").items())


def killed(run_dir: Path) -> None:
    """The run directory as a kill after the last checkpoint leaves it: no model.pt, the record still running."""
    (run_dir / "model.pt").unlink()
    record = summary(run_dir)
    (run_dir / "run_summary.json").write_text(json.dumps({**record, "status": "running"}))


def test_resume_auto_continues_a_checkpoint_and_resume_false_trains_afresh(job, tmp_path, monkeypatch, reference):
    """resume=auto (the default): an interrupted run continues, a completed one is kept, one killed after its last
    checkpoint trains nothing more; resume=false trains afresh over it. Each ends with the uninterrupted weights
    and each epoch's row once."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_after(m, STEPS + 3)  # in the middle of epoch 2
        with pytest.raises(KeyboardInterrupt):
            job(run_dir, TRAIN)
    first = rows(run_dir)
    job(run_dir, TRAIN)
    assert_completed(run_dir)
    assert_same_weights(reference, run_dir / "model.pt")
    resumed = rows(run_dir)
    assert resumed[:1] == first  # epoch 1 was not trained again

    record = (run_dir / "run_summary.json").read_bytes()
    job(run_dir, TRAIN)  # completed: kept as it is
    assert (run_dir / "run_summary.json").read_bytes() == record and rows(run_dir) == resumed

    killed(run_dir)
    job(run_dir, TRAIN)
    assert_completed(run_dir)
    assert_same_weights(reference, run_dir / "model.pt")
    assert rows(run_dir) == resumed  # nothing trained again

    job(run_dir, [*TRAIN, "resume=false"])
    assert_completed(run_dir)
    assert_same_weights(reference, run_dir / "model.pt")
    assert not [r for r in rows(run_dir) if r in resumed]  # every epoch trained again, each row written once


def test_a_state_written_by_other_code_is_continued_and_the_record_says_so(job, tmp_path, monkeypatch):
    """Training and crafting states carry the code version that wrote them; continuing one of another version
    logs it and lists that version in the record's continued_code, which the report counts as a second commit."""
    import cbuap_runner.record as record_module
    from cbuap_runner.report.formats import provenance_line
    from cbuap_runner.report.records import commit_counts

    run_dir = tmp_path / "run"
    monkeypatch.setattr(record_module, "git_commit", lambda: "old")
    with monkeypatch.context() as m:
        interrupt_after(m, STEPS + 3)  # in the middle of epoch 2
        with pytest.raises(KeyboardInterrupt):
            job(run_dir, TRAIN)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["code"] == "old"
    monkeypatch.setattr(record_module, "git_commit", lambda: "new")
    job(run_dir, TRAIN)
    record = summary(run_dir)
    assert record["continued_code"] == ["old"]
    assert set(commit_counts([record])) == {"old", record["git_commit"]}
    assert "1 run continued a training or crafting state another code version wrote" in provenance_line([record])
    job(run_dir, [*TRAIN, "resume=false"])  # afresh: nothing continued
    assert "continued_code" not in summary(run_dir)


def test_a_completed_run_is_kept_unless_a_file_it_read_has_changed(job, tmp_path):
    """A relaunch keeps a completed run of the same config, but runs it again when the network file it read holds
    other bytes now (another sweep retrained it in place)."""
    import shutil

    for seed in (0, 1):
        job(tmp_path / f"net{seed}", [*TRAIN, f"seed={seed}"])
    network = tmp_path / "network.pt"
    shutil.copyfile(tmp_path / "net0" / "model.pt", network)
    run_dir, attack = tmp_path / "attack", [*ATTACK, f"model.checkpoint={network}"]
    job(run_dir, attack)
    first = (run_dir / "run_summary.json").read_bytes()
    job(run_dir, attack)
    assert (run_dir / "run_summary.json").read_bytes() == first  # kept
    shutil.copyfile(tmp_path / "net1" / "model.pt", network)
    job(run_dir, attack)
    again = summary(run_dir)
    assert again["status"] == "completed" and again["provenance"]["model"]["sha256"] != json.loads(first)[
        "provenance"]["model"]["sha256"]


def test_a_run_from_a_tree_with_uncommitted_edits_says_so(job, tmp_path, monkeypatch, caplog):
    import cbuap_runner.job as job_module

    monkeypatch.setattr(job_module, "git_commit", lambda: "abc1234-dirty")
    job(tmp_path / "run", TRAIN)
    assert summary(tmp_path / "run")["git_commit"] == "abc1234-dirty"
    assert "uncommitted edits: the record names commit abc1234-dirty" in caplog.text


def test_a_crafting_state_of_other_code_is_continued_and_noted(tmp_path, caplog):
    def record(code: str) -> RunRecord:
        r = RunRecord(tmp_path / "run")
        r._code = code
        return r

    key = {"attack": {"name": "sgd_uap"}, "seed": 0}
    record("old").crafting("sgd_uap", key, 100).save({"loop": {"passes": 1, "position": 0}, "attack": {}})
    same = record("old")
    assert same.crafting("sgd_uap", key, 100).load() is not None and not same.continued_code
    later = record("new")
    assert later.crafting("sgd_uap", key, 100).load() is not None and later.continued_code == {"old"}
    assert "was written by code old, this run is new" in caplog.text


ATTACK = ["task=attack", "dataset=synthetic", "model=small_cnn", "training.epochs=1", "training.batch_size=32",
          "attack=sgd_uap", "attack.passes=2", "attack.crafting_images=64", "attack.batch_size=32", "eval.num_images=64",
          "eval.batch_size=64"]


def test_attack_repeated_in_its_directory_leaves_one_set_of_crafting_rows(job, tmp_path):
    """The first attempt trains the model (its epoch row) and crafts; the second (resume=false: a completed run is
    otherwise kept) uses the cached model and crafts again: metrics.jsonl keeps the epoch row and one row per
    crafting pass."""
    run_dir = tmp_path / "run"
    for extra in ([], ["resume=false"]):
        job(run_dir, [*ATTACK, *extra])
        assert summary(run_dir)["status"] == "completed"
    assert [r["pass"] for r in rows(run_dir) if "pass" in r] == [1, 2]
    assert epoch_rows(run_dir) == [1]


def test_forget_rows_drops_only_the_section_it_names(tmp_path):
    kept = [{"epoch": 1, "train_loss": 1.0}, {"sgd_uap/pass": 1}, {"uap/pass": 1}]
    lines = [kept[0], {"pass": 1}, kept[1], {"pass": 2}, kept[2]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"pass": 3, "objec')
    assert RunRecord(tmp_path).forget_rows("pass") == 3  # two rows and the line cut short
    assert rows(tmp_path) == kept
    assert RunRecord(tmp_path).forget_rows("sgd_uap/pass") == 1 and rows(tmp_path) == [kept[0], kept[2]]
    assert RunRecord(tmp_path / "nothing").forget_rows("pass") == 0


# ---------------------------------------------------------------- non-finite values


class _NaNFromEpoch2(Natural):
    def loss(self, model, x, y, step):
        loss, logits = super().loss(model, x, y, step)
        return (loss * float("nan") if step >= STEPS else loss), logits


class _DeltaNaNFromEpoch2(Natural):
    epoch = 0

    def on_epoch_start(self, model, epoch, *args):
        self.epoch = epoch

    def finite(self) -> bool:
        return self.epoch < 1


@pytest.mark.parametrize("adversary,defence,needle", [(_NaNFromEpoch2, "natural", "training.lr="),
                                                      (_DeltaNaNFromEpoch2, "uat", "training.step_size="),
                                                      (_DeltaNaNFromEpoch2, "cb_uat", "training.adversary.step_size=")])
def test_non_finite_value_stops_and_keeps_the_last_good_checkpoint(adversary, defence, needle, validated, tmp_path):
    cfg = validated([*TRAIN, f"training={defence}"])
    data = load_data(cfg.dataset, str(tmp_path), cfg.seed, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model("small_cnn", data.num_classes, data.input_shape)
    rows = []
    with pytest.raises(NonFiniteError) as info:
        fit(model, adversary(cfg.training, data.num_classes, data.input_shape, torch.device("cpu")), data,
            cfg.dataset, cfg.training, TrainingRun(RunRecord(tmp_path), cfg.seed, torch.device("cpu"), rows.append, {}))
    message = str(info.value)
    assert needle in message and "epoch 2" in message and "keeps epoch 1" in message and "\n" not in message
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and [r["epoch"] for r in rows] == [1]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_huge_learning_rate_fails_cleanly(job, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteError):
        job(run_dir, [*TRAIN, "training.lr=1e30"])
    record = summary(run_dir)
    assert record["status"] == "failed" and record["error"].startswith("training.lr=1e+30: ")
    assert "no epoch finished" in record["error"]
    assert not (run_dir / "model.pt").exists() and not (run_dir / "checkpoint.pt").exists()


# ---------------------------------------------------------------- SIGKILL of the real command line

# Runs the CLI and kills itself (SIGKILL: no handler, no cleanup) at the point named by CBUAP_KILL:
#   step:N        after the N-th optimiser step
#   checkpoint:E  right after checkpoint.pt of epoch E is in place (before its metrics row)
#   rename:E      while checkpoint.pt of epoch E is written: temp file complete, not yet renamed
#   deepfool:N    at the N-th DeepFool run of a DeepFool UAP's crafting
KILLER = r"""
import os, signal, sys
what, _, n = os.environ["CBUAP_KILL"].partition(":")
n = int(n)
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if what == "step":
    from torch.optim.optimizer import register_optimizer_step_post_hook
    count = [0]
    def hook(opt, args, kwargs):
        count[0] += 1
        if count[0] == n:
            die()
    register_optimizer_step_post_hook(hook)
elif what == "checkpoint":
    from cbuap_runner.record import RunRecord
    save = RunRecord.save_training
    def save_then_die(self, **state):
        save(self, **state)
        if state["epoch"] == n:
            die()
    RunRecord.save_training = save_then_die
elif what == "rename":
    replace, seen = os.replace, [0]
    def replace_or_die(src, dst, *a, **k):
        if str(dst).endswith("checkpoint.pt"):
            seen[0] += 1
            if seen[0] == n:
                die()
        return replace(src, dst, *a, **k)
    os.replace = replace_or_die
elif what == "deepfool":
    import cbuap_runner.attacks.deepfool_uap as df
    run, calls = df._run_deepfool, [0]
    def run_or_die(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            die()
        return run(*a, **k)
    df._run_deepfool = run_or_die
from cbuap_runner.__main__ import main
sys.argv[0] = "cbuap"
main()
"""


def run_killed(args: list[str], run_dir: Path, kill: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", KILLER, *FAST, f"hydra.run.dir={run_dir}", f"cache_dir={run_dir.parent / 'cache'}",
           *args]
    env = {**os.environ, "WANDB_MODE": "disabled", "CBUAP_KILL": kill}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """model.pt of an uninterrupted run of TRAIN (in-process: the same numbers as the CLI on one thread)."""
    tmp = tmp_path_factory.mktemp("reference")
    overrides = [*FAST, f"cache_dir={tmp / 'cache'}", *TRAIN]
    run_job(compose_config(overrides), tmp / "run", overrides, False, None)
    return tmp / "run" / "model.pt"


def kill_and_resume(kill: str, tmp_path: Path, reference: Path, checkpoint_epoch, rows: list[int]) -> Path:
    run_dir = tmp_path / "run"
    proc = run_killed(TRAIN, run_dir, kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # what the kill left: the last complete checkpoint, the rows appended so far, no result, an honest record
    ckpt = run_dir / "checkpoint.pt"
    assert (torch.load(ckpt, weights_only=True)["epoch"] if ckpt.exists() else None) == checkpoint_epoch
    assert epoch_rows(run_dir) == rows
    assert not (run_dir / "model.pt").exists()
    assert summary(run_dir)["status"] == "running"  # a killed run's record does not claim completion

    proc = run_cli([*TRAIN, "resume=true"], run_dir)
    assert proc.returncode == 0, proc.stderr
    assert_completed(run_dir)
    assert_same_weights(reference, run_dir / "model.pt")
    return run_dir


@pytest.mark.e2e
def test_sigkill_mid_epoch_2_resumes_to_identical_weights(tmp_path, reference):
    kill_and_resume(f"step:{STEPS + 3}", tmp_path, reference, 1, [1])


def launch_multirun(sweep: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    """`python -m cbuap_runner -m ... seed=1,0` into `sweep` (basic launcher: the jobs run one after the other in
    this process); with `kill`, the same command line run by KILLER, which SIGKILLs the whole multirun there."""
    args = ["-m", *FAST, f"hydra.sweep.dir={sweep}", f"cache_dir={sweep.parent / 'cache'}", *TRAIN, "seed=1,0"]
    entry = ["-m", "cbuap_runner"] if kill is None else ["-c", KILLER]
    env = {**os.environ, "WANDB_MODE": "disabled", **({"CBUAP_KILL": kill} if kill else {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, *entry, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.e2e
def test_multirun_killed_and_launched_again_continues_each_job(tmp_path, reference):
    """As submitit requeues a preempted SLURM job (the same command, overrides and sweep directory), with the default
    resume=auto: job 0 (finished before the kill) trains nothing more, job 1 (killed in epoch 2) continues from its
    checkpoint to the weights of an uninterrupted run of its config (seed=0 is TRAIN), each epoch's row once."""
    sweep = tmp_path / "sweep"
    proc = launch_multirun(sweep, kill=f"step:{EPOCHS * STEPS + STEPS + 3}")  # all of job 0, then job 1's epoch 2
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    finished, killed = sweep / "0", sweep / "1"
    assert_completed(finished)
    before = {run_dir: rows(run_dir) for run_dir in (finished, killed)}
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"] == 1 and epoch_rows(killed) == [1]
    assert not (killed / "model.pt").exists() and summary(killed)["status"] == "running"
    finished_weights = weights(finished / "model.pt")

    proc = launch_multirun(sweep)
    assert proc.returncode == 0, proc.stderr
    for run_dir in (finished, killed):
        assert_completed(run_dir)
        assert rows(run_dir)[:len(before[run_dir])] == before[run_dir]  # what was trained was not trained again
    assert_same_weights(reference, killed / "model.pt")
    assert all(torch.equal(finished_weights[k], v) for k, v in weights(finished / "model.pt").items())


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("kill,checkpoint_epoch,rows", [
    ("step:3", None, []),
    ("checkpoint:1", 1, []),  # the checkpoint is in place, its metrics row is not
    ("rename:2", 1, [1]),
    (f"checkpoint:{EPOCHS}", EPOCHS, list(range(1, EPOCHS))),
], ids=["during_epoch_1", "right_after_checkpoint_1", "while_writing_checkpoint_2", "after_the_last_checkpoint"])
def test_sigkill_resumes_to_identical_weights(kill, checkpoint_epoch, rows, tmp_path, reference):
    run_dir = kill_and_resume(kill, tmp_path, reference, checkpoint_epoch, rows)
    if kill.startswith("rename"):  # the interrupted write left only its hidden temp file, never a half checkpoint
        assert [p.name for p in run_dir.glob("*.tmp")] and all(
            p.name.startswith(".checkpoint.pt.") for p in run_dir.glob("*.tmp"))


# ---------------------------------------------------------------- crafting resumes

CRAFTS = {  # attack name, its keys: every kind of state a crafting run carries
    "sgd_uap": ("sgd_uap", {}),
    "sgd_uap_starts_adam_patience": ("sgd_uap", {"num_starts": 2, "init": "uniform", "optimizer": "adam",
                                                 "patience": 1, "tol": 0.5}),
    "cb_uap_terms_schedule_reweight": ("cb_uap", {"balance": BalanceConfig(lambda_div=0.5, lambda_pen=0.5,
                                                                           penalty="frequency", lambda_ramp=2,
                                                                           fooling_guard=0.1, class_reweight=True,
                                                                           dro_eta=0.1)}),
    "cw_uap": ("cw_uap", {}),
    "uap": ("uap", {}),
    "uap_relaxed": ("uap", {"deepfool": DeepFoolConfig(batching="relaxed", chunk=8)}),
}


class _Dies(torch.nn.Module):
    """The model, raising KeyboardInterrupt (as Ctrl-C would) at its forward call number `at`."""

    def __init__(self, model: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt("interrupted")
        return self.model(x)


@pytest.fixture(scope="module")
def toy():
    return train_toy_model()


def _craft(model, toy, cfg, checkpoint=None):
    _, x, y, xt, yt = toy
    return craft(model, x[:96], y[:96], cfg, TOY_K, generator=torch.Generator().manual_seed(3), val=(xt, yt),
                 **({} if checkpoint is None else {"checkpoint": checkpoint}))


@pytest.mark.parametrize("case", list(CRAFTS))
def test_crafting_interrupted_anywhere_resumes_to_the_same_perturbation(case, toy, tmp_path):
    """Interrupted at several points (mid-pass between two checkpoints, at a pass end), continued from the
    crafting state file each time: δ, the history and the totals equal an uninterrupted run's."""
    name, keys = CRAFTS[case]
    cfg = attack_config(name, eps=0.05, passes=3, batch_size=16, **keys)
    model = toy[0]
    counted = _Dies(model, 10 ** 9)
    reference = _craft(counted, toy, cfg)
    checkpoint = RunRecord(tmp_path).crafting(name, {"case": case}, every=24)
    interruptions, at = 0, 8
    while True:
        last = _Dies(model, at)
        try:
            result = _craft(last, toy, cfg, checkpoint)
            break
        except KeyboardInterrupt:
            interruptions += 1
            at += 4 + interruptions
    assert interruptions >= 2 and checkpoint.path.is_file()
    assert last.calls < counted.calls  # the last attempt continued; it did not start again
    assert torch.equal(result.delta, reference.delta)
    assert result.history == reference.history
    assert (result.passes, result.converged, result.images_processed, result.stats) == (
        reference.passes, reference.converged, reference.images_processed, reference.stats)
    again = _craft(_Dies(model, 10 ** 9), toy, cfg, checkpoint)  # a finished state: nothing left to craft
    assert torch.equal(again.delta, reference.delta) and again.history == reference.history


def test_a_crafting_state_of_other_settings_is_refused_and_resume_false_starts_afresh(toy, tmp_path):
    cfg = attack_config("sgd_uap", eps=0.05, passes=2, batch_size=16)
    _craft(toy[0], toy, cfg, RunRecord(tmp_path).crafting("sgd_uap", {"attack": {"eps": 0.05}}, every=0))
    with pytest.raises(UserError, match=r"^attack\.eps=0\.1: .*sgd_uap\.pt was crafted with attack\.eps=0\.05; "
                                        r"resume=auto continues it only under the same settings"):
        _craft(toy[0], toy, cfg, RunRecord(tmp_path).crafting("sgd_uap", {"attack": {"eps": 0.1}}, every=0))
    fresh = _craft(toy[0], toy, cfg, RunRecord(tmp_path, resume=False).crafting("sgd_uap", {"attack": {}}, every=0))
    assert torch.equal(fresh.delta, _craft(toy[0], toy, cfg).delta)


PIPELINE = ["task=pipeline", "dataset=synthetic", "model=small_cnn", "training.epochs=1", "training.batch_size=32",
            "pipeline.attacks=[sgd_uap,uap]", "attack.passes=2", "attack.crafting_images=128", "attack.batch_size=32",
            "eval.num_images=64", "eval.batch_size=64", "checkpoint_images=16"]


@pytest.mark.e2e
def test_deepfool_uap_in_a_pipeline_killed_mid_pass_resumes_to_the_same_perturbation(tmp_path):
    """SIGKILL in the middle of DeepFool UAP's first pass, after SGD-UAP finished: the relaunch (resume=auto) trains
    nothing, crafts nothing of SGD-UAP again and continues DeepFool UAP from its last state; both perturbations equal
    an uninterrupted run's, and each crafting pass has one row."""
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert run_cli(PIPELINE, reference, cache_dir=tmp_path / "cache").returncode == 0
    runs = [r["uap/deepfool_runs"] for r in rows(reference) if "uap/pass" in r]
    assert runs[0] > 30  # the kill below falls inside the first pass
    proc = run_killed(PIPELINE, run_dir, "deepfool:30")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = torch.load(run_dir / "crafting" / "uap.pt", weights_only=True)
    assert state["loop"]["passes"] == 0 and state["loop"]["position"] > 0  # a checkpoint inside the first pass
    assert torch.load(run_dir / "crafting" / "sgd_uap.pt", weights_only=True)["loop"]["passes"] == 2

    proc = run_cli(PIPELINE, run_dir)
    assert proc.returncode == 0, proc.stderr
    log = (run_dir / "cbuap.log").read_text()
    assert "resuming from epoch 1 of 1" in log and "continuing the crafting of sgd_uap after 2 passes" in log
    assert re.search(r"continuing the crafting of uap after 0 passes and [1-9]\d* positions", log)
    for name in ("sgd_uap", "uap"):
        ours, theirs = (torch.load(d / f"perturbation_{name}.pt", weights_only=True)["delta"] for d in (run_dir,
                                                                                                       reference))
        assert torch.equal(ours, theirs), name
        assert [r[f"{name}/pass"] for r in rows(run_dir) if f"{name}/pass" in r] == [1, 2]
    assert summary(run_dir)["metrics"]["attacks"]["uap"]["fooling_rate"] == \
        summary(reference)["metrics"]["attacks"]["uap"]["fooling_rate"]
