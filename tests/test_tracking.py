"""tracking/: the local record, the W&B back end (offline and disabled) and the fan-out."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cbuap_runner.errors import UserError
from cbuap_runner.schema import LoggerConfig
from cbuap_runner.tracking import (
    LocalTracker,
    MultiTracker,
    NullTracker,
    default_group,
    default_run_name,
    make_tracker,
)

# A 1x1 PNG, so the tests need no image library.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e221bc330000000049454e44ae426082"
)


def _files(run_dir: Path) -> dict[str, Path]:
    (run_dir / "perturbation.png").write_bytes(PNG)
    (run_dir / "perturbation.pt").write_bytes(b"delta")
    return {"image": run_dir / "perturbation.png", "artifact": run_dir / "perturbation.pt"}


def read_wandb_records(path: Path) -> list:
    """Decode a `run-*.wandb` transaction log (LevelDB log framing of protobuf `Record`s)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, offset, pending, records = 32768, 7, b"", []
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # block trailer padding
            offset += block - offset % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_finished_run(run_dir: Path, timeout: float = 30.0) -> list:
    """The records of the one offline run under `run_dir`, once its exit record is on disk
    (wandb-core writes the transaction log asynchronously: `finish()` may return first)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = list(run_dir.glob("run-*.wandb"))
        records = read_wandb_records(logs[0]) if len(logs) == 1 else []
        if _by_type(records, "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _by_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _history(records: list) -> list[dict]:
    rows = []
    for h in _by_type(records, "history"):
        rows.append({".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in h.item})
    return rows


@pytest.fixture()
def wandb_env(tmp_path: Path, monkeypatch):
    """Keep every file wandb writes (logs, artifact staging, settings) inside tmp_path."""
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_local_tracker_writes_metrics_and_tables(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    files = _files(run_dir)
    tracker = LocalTracker(run_dir)
    tracker.log({"loss": 1.5, "acc": 0.5}, step=0)
    tracker.log({"loss": 1.25})  # step continues from the last one
    tracker.log({"epoch_loss": 1.0}, step=7)
    tracker.log_images({"perturbation": files["image"], "missing": run_dir / "nope.png"})
    tracker.log_artifact(files["artifact"], "perturbation", "perturbation", {"eps": 0.1})
    tracker.log_table("per_class", [{"class": 0, "acc": 0.5}, {"class": 1, "acc": 0.25, "note": "x"}])
    tracker.set_summary({"fooling_rate": 0.7})
    tracker.finish("completed")

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 7]
    assert lines[0]["loss"] == 1.5 and lines[1]["loss"] == 1.25 and lines[2]["epoch_loss"] == 1.0
    assert all(isinstance(line["time"], float) for line in lines)
    assert json.loads((run_dir / "tables" / "per_class.json").read_text())[1] == {"class": 1, "acc": 0.25, "note": "x"}
    assert tracker.files() == {
        "images": {"perturbation": "perturbation.png"},
        "artifacts": {"perturbation": {"path": "perturbation.pt", "type": "perturbation", "metadata": {"eps": 0.1}}},
        "tables": {"per_class": "tables/per_class.json"},
    }
    assert tracker.summary == {"fooling_rate": 0.7} and tracker.status == "completed"


def test_local_tracker_converts_tensors(tmp_path: Path):
    torch = pytest.importorskip("torch")
    tracker = LocalTracker(tmp_path)
    tracker.log({"loss": torch.tensor(0.5), "hist": torch.tensor([1, 2])}, step=3)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["loss"] == 0.5 and line["hist"] == [1, 2] and line["step"] == 3


def test_make_tracker_local_only(tmp_path: Path):
    tracker = make_tracker(LoggerConfig(name="local"), tmp_path, config={"task": "attack"}, run_name="r")
    assert isinstance(tracker, MultiTracker) and [type(t) for t in tracker.trackers] == [LocalTracker]
    with tracker:
        tracker.log({"x": 1}, step=0)
    assert tracker[0].status == "completed"
    assert isinstance(make_tracker(LoggerConfig(), tmp_path, rank=1), NullTracker)
    with pytest.raises(UserError, match="logger.name"):
        make_tracker({"name": "tensorboard"}, tmp_path)
    with pytest.raises(ValueError):
        tracker.finish("crashed")


def test_wandb_offline_run_records_everything(wandb_env: Path):
    run_dir = wandb_env / "run"
    run_dir.mkdir()
    files = _files(run_dir)
    cfg = LoggerConfig(name="wandb", mode="offline", project="test-project", tags=["t1"])
    config = {"task": "attack", "attack": {"name": "cb_uap", "eps": 0.1}}
    tracker = make_tracker(cfg, run_dir, config=config, run_name="job-0", group="sweep-a")
    try:
        tracker.log({"loss": 1.5}, step=0)
        tracker.log({"loss": 1.25}, step=1)
        tracker.log_images({"perturbation": files["image"]})
        tracker.log_artifact(files["artifact"], "perturbation", "perturbation", {"eps": 0.1, "attack": "cb_uap"})
        tracker.log_table("per_class", [{"class": 0, "acc": 0.5}, {"class": 1, "acc": None}])
        tracker.set_summary({"fooling_rate": 0.7})
    finally:
        tracker.finish("completed")

    assert (run_dir / "metrics.jsonl").exists()  # the local record is always written
    (offline,) = list((run_dir / "wandb").glob("offline-run-*"))
    records = read_finished_run(offline)

    (run,) = _by_type(records, "run")
    assert run.project == "test-project" and run.run_group == "sweep-a" and run.job_type == "attack"
    assert run.display_name == "job-0" and list(run.tags) == ["t1"]
    config_items = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config_items["attack"] == {"name": "cb_uap", "eps": 0.1}

    history = _history(records)
    assert [(h["_step"], h["loss"]) for h in history if "loss" in h] == [(0, 1.5), (1, 1.25)]
    assert any(h.get("perturbation._type") == "image-file" for h in history)
    assert list((offline / "files" / "media" / "images").glob("perturbation_*.png"))

    artifacts = {a.name: a for a in _by_type(records, "artifact")}
    art = artifacts["perturbation"]
    assert art.type == "perturbation" and json.loads(art.metadata) == {"eps": 0.1, "attack": "cb_uap"}
    assert [c.path for c in art.manifest.contents] == ["perturbation.pt"]
    assert any(a.type == "run_table" for a in artifacts.values())

    summary = {".".join(u.nested_key) or u.key: json.loads(u.value_json) for s in _by_type(records, "summary")
               for u in s.update}
    assert summary["fooling_rate"] == 0.7
    (exit_record,) = _by_type(records, "exit")
    assert exit_record.exit_code == 0


def test_wandb_failed_run_exits_1_and_next_job_gets_its_own_run(wandb_env: Path):
    cfg = {"name": "wandb", "mode": "offline", "dir": str(wandb_env / "wb")}
    failed = make_tracker(cfg, wandb_env / "job0", config={"task": "train"}, run_name="job0")
    with pytest.raises(RuntimeError):
        with failed:
            failed.log({"loss": 2.0}, step=0)
            raise RuntimeError("boom")
    second = make_tracker(cfg, wandb_env / "job1", config={"task": "train"}, run_name="job1")
    second.log({"loss": 1.0}, step=0)
    second.finish("completed")

    runs = sorted((wandb_env / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    by_name = {}
    for run_dir in runs:
        records = read_finished_run(run_dir)
        by_name[_by_type(records, "run")[0].display_name] = _by_type(records, "exit")[0].exit_code
    assert by_name == {"job0": 1, "job1": 0}


def test_wandb_disabled_has_no_side_effects(wandb_env: Path):
    run_dir = wandb_env / "run"
    run_dir.mkdir()
    files = _files(run_dir)
    cfg = LoggerConfig(name="wandb", mode="disabled", dir=str(wandb_env / "never"))
    tracker = make_tracker(cfg, run_dir, config={"task": "attack"}, run_name="r")
    tracker.log({"loss": 1.0}, step=0)
    tracker.log_images({"perturbation": files["image"]})
    tracker.log_artifact(files["artifact"], "perturbation", "perturbation", {"eps": 0.1})
    tracker.log_table("t", [{"a": 1}])
    tracker.set_summary({"fooling_rate": 0.7})
    tracker.finish("failed")
    assert not (wandb_env / "never").exists() and not (run_dir / "wandb").exists()
    assert not (wandb_env / "wandb_home").exists()
    assert (run_dir / "metrics.jsonl").exists()


def test_wandb_online_without_api_key_falls_back_to_offline(wandb_env: Path, monkeypatch):
    import wandb

    calls = []
    real_init = wandb.init

    def fake_init(*args, mode=None, **kwargs):
        calls.append(mode)
        if mode == "online":
            raise wandb.errors.UsageError("No API key configured.")
        return real_init(*args, mode="disabled", **kwargs)

    monkeypatch.setattr(wandb, "init", fake_init)
    tracker = make_tracker({"name": "wandb", "mode": "online"}, wandb_env / "run", config={}, run_name="r")
    tracker.finish("completed")
    assert calls == ["online", "offline"] and tracker[1].mode == "offline"


def test_default_group_and_run_name():
    multirun = SimpleNamespace(mode="RunMode.MULTIRUN", sweep=SimpleNamespace(dir="outputs/multirun/cbuap_attacks"),
                               job=SimpleNamespace(name="cbuap", num=3, override_dirname="attack=cb_uap,seed=1"))
    assert default_group(multirun) == "cbuap_attacks"
    assert default_run_name(multirun) == "3:attack=cb_uap,seed=1"
    stamped = SimpleNamespace(mode="MULTIRUN", sweep=SimpleNamespace(dir="multirun/2024-05-01/12-30-00"))
    assert default_group(stamped) == "2024-05-01_12-30-00"
    single = SimpleNamespace(mode="RUN", sweep=SimpleNamespace(dir="x"),
                             job=SimpleNamespace(name="cbuap", num=0, override_dirname=""))
    assert default_group(single) is None and default_run_name(single) == "cbuap"
    assert default_group() is None  # outside a Hydra app


def test_default_group_from_real_hydra_config():
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.create({"mode": RunMode.MULTIRUN, "sweep": {"dir": "outputs/sweeps/eps"},
                                  "job": {"name": "cbuap", "num": 0, "override_dirname": "attack.eps=0.1"}})
    assert default_group(hydra_cfg) == "eps"
    assert default_run_name(hydra_cfg) == "0:attack.eps=0.1"
