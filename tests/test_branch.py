"""branch_from: a run whose settings differ from another's only in training.epochs starts from that run's checkpoint
where their learning rates agree, and ends as it would have trained from epoch 1 (bit for bit on CPU), its record
naming the checkpoint; a checkpoint past the point where the schedules part, or of other settings, is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cbuap_runner.errors import UserError
from cbuap_runner.provenance import file_sha256
from cbuap_runner.report.formats import wall_time
from cbuap_runner.training.branch import first_other_rate
from test_resume import STEPS, assert_same_weights, interrupt_after, rows, summary

# a step schedule decays at half and three quarters of the run: a 4-epoch run first at epoch 2's end, an 8-epoch
# run at epoch 4's, so the two agree on every step of their first 2 epochs (the 4-epoch run's next rate is lower)
STEP = ["task=train", "dataset=synthetic", "model=small_cnn", "training.batch_size=32", "training.schedule=step",
        "eval.num_images=64", "eval.batch_size=64"]
SHORT, LONG = [*STEP, "training.epochs=4"], [*STEP, "training.epochs=8"]
UNTIMED = ("time", "epoch_seconds")


@pytest.fixture
def epoch2(job, tmp_path):
    """The checkpoint a 4-epoch run keeps after its epoch 2 (keep_checkpoints); its checkpoint.pt holds epoch 4."""
    job(tmp_path / "short", [*SHORT, "keep_checkpoints=[2]"])
    kept = tmp_path / "short" / "checkpoint_epoch2.pt"
    assert torch.load(kept, weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "short" / "checkpoint.pt", weights_only=True)["epoch"] == 4
    return kept


def untimed(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in UNTIMED} for row in rows(run_dir)]


def test_a_branch_ends_as_the_run_trained_from_epoch_1_and_its_record_names_its_source(job, epoch2, tmp_path,
                                                                                        monkeypatch):
    job(tmp_path / "long", LONG)
    branch = tmp_path / "branch"
    with monkeypatch.context() as m:  # the branch itself interrupted in its epoch 4: it continues its own checkpoint
        interrupt_after(m, STEPS + 2)
        with pytest.raises(KeyboardInterrupt):
            job(branch, [*LONG, f"branch_from={epoch2}"])
    job(branch, [*LONG, f"branch_from={epoch2}"])
    assert_same_weights(tmp_path / "long" / "model.pt", branch / "model.pt")
    assert untimed(branch) == untimed(tmp_path / "long")  # the inherited rows say this run's rates
    record = summary(branch)
    source = {"path": str(epoch2), "sha256": file_sha256(epoch2), "epoch": 2, "epochs": 4,
              "train_seconds": torch.load(epoch2, weights_only=True)["train_seconds"], "code": record["git_commit"]}
    assert record["status"] == "completed" and record["train_branched_from"] == source
    assert record["train_continued_from"] == 3
    assert torch.load(branch / "model.pt", weights_only=True)["provenance"]["branched_from"] == source

    kept = (branch / "run_summary.json").read_bytes()  # relaunched with or without branch_from: kept as it is
    job(branch, LONG)
    assert (branch / "run_summary.json").read_bytes() == kept
    short, long = summary(tmp_path / "short"), summary(tmp_path / "long")
    timed = wall_time([short, record]).training  # the shared epochs count once, as the shorter run's
    assert timed == pytest.approx(short["metrics"]["train_seconds"] + record["metrics"]["train_seconds"]
                                  - source["train_seconds"])
    assert wall_time([short, long]).training == short["metrics"]["train_seconds"] + long["metrics"]["train_seconds"]


def test_a_shorter_schedule_branches_from_a_longer_run_before_it_decays(job, tmp_path):
    job(tmp_path / "long", [*LONG, "keep_checkpoints=[2]"])  # the 8-epoch run's epoch 2: both still at the first rate
    kept = tmp_path / "long" / "checkpoint_epoch2.pt"
    job(tmp_path / "short", SHORT)
    job(tmp_path / "branch", [*SHORT, f"branch_from={kept}"])
    assert_same_weights(tmp_path / "short" / "model.pt", tmp_path / "branch" / "model.pt")
    assert untimed(tmp_path / "branch") == untimed(tmp_path / "short")
    record = summary(tmp_path / "branch")  # it trained epochs 3-4 only, from the 8-epoch run's epoch 2
    assert record["train_continued_from"] == 2
    assert (record["train_branched_from"]["epoch"], record["train_branched_from"]["epochs"]) == (2, 8)


def test_a_checkpoint_past_the_point_where_the_schedules_part_is_refused(job, epoch2, tmp_path):
    with pytest.raises(UserError, match=r"^branch_from=.*from epoch 3 \(step 12\), before its epoch 4 ended; "
                                        r"branch from a checkpoint of epoch 2 or earlier"):
        job(tmp_path / "branch", [*LONG, f"branch_from={tmp_path / 'short' / 'checkpoint.pt'}"])


def test_cosine_schedules_of_two_lengths_part_after_their_first_step(validated):
    cfg = validated(["training.schedule=cosine", "training.epochs=8"]).training
    assert first_other_rate(cfg, STEPS, 4, 2) == 1
    assert first_other_rate(cfg, STEPS, 8, 2) is None


@pytest.mark.parametrize("other, key", [("training.lr=0.02", "training.lr"), ("seed=1", "seed")])
def test_a_checkpoint_of_other_settings_is_refused_naming_the_key(job, epoch2, tmp_path, other, key):
    with pytest.raises(UserError, match=rf"^branch_from=.*trained with {key}=.*only in training.epochs"):
        job(tmp_path / "branch", [*LONG, f"branch_from={epoch2}", other])


def test_a_missing_source_is_refused_before_any_work(job, tmp_path):
    with pytest.raises(UserError, match=r"^branch_from='.*nowhere.pt': no such file"):
        job(tmp_path / "branch", [*LONG, f"branch_from={tmp_path / 'nowhere.pt'}"])
    assert not (tmp_path / "branch" / "checkpoint.pt").exists()
    with pytest.raises(UserError, match=r"^keep_checkpoints=\[0\]: each must be an epoch number, 1 or more"):
        job(tmp_path / "keep", [*LONG, "keep_checkpoints=[0]"])


def test_a_record_written_before_a_null_key_existed_is_still_a_completed_run_of_the_config(job, tmp_path):
    run_dir = tmp_path / "run"
    job(run_dir, [*STEP, "training.epochs=1"])
    record = summary(run_dir)
    del record["config"]["branch_from"]
    (run_dir / "run_summary.json").write_text(json.dumps(record))
    kept = (run_dir / "run_summary.json").read_bytes()
    job(run_dir, [*STEP, "training.epochs=1"])
    assert (run_dir / "run_summary.json").read_bytes() == kept
