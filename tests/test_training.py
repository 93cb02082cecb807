"""Training: the natural loop end to end, every defence's adversary, the model cache and the pipeline task."""

from __future__ import annotations

import json

import pytest
import torch

from cbuap_runner.data import load_data
from cbuap_runner.models import build_model
from cbuap_runner.training import DEFENCES, make_adversary
from cbuap_runner.training.loop import fit


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_end_to_end_on_synthetic(cli):
    proc, run_dir = cli(["task=train", "dataset=synthetic", "training.epochs=2", "training.batch_size=32"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "completed" and summary["task"] == "train"
    assert summary["metrics"]["clean_acc"] > 0.5  # 4 learnable classes: chance is 0.25
    assert [r["epoch"] for r in _records(run_dir)] == [1, 2]
    blob = torch.load(run_dir / "model.pt", weights_only=True)
    assert blob["input_shape"] == [1, 16, 16] and blob["num_classes"] == 4
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def _setup(validated, defence, tmp_path, extra=()):
    cfg = validated(["dataset=synthetic", f"training={defence}", "training.batch_size=32", "training.epochs=1",
                     "training.refresh_steps=2", "training.adversary.batch_size=32", "training.steps=2", *extra])
    data = load_data(cfg.dataset, str(tmp_path), cfg.seed, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model("small_cnn", data.num_classes, data.input_shape, [0.5], [0.25])
    adversary = make_adversary(defence, cfg.training, data.num_classes, data.input_shape, torch.device("cpu"))
    return cfg, data, model, adversary


@pytest.mark.parametrize("defence", list(DEFENCES))
def test_every_defence_trains_and_keeps_its_perturbation_in_budget(defence, validated, tmp_path):
    cfg, data, model, adversary = _setup(validated, defence, tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    result = fit(model, adversary, data, cfg.dataset, cfg.training, tmp_path, cfg.seed, torch.device("cpu"),
                 lambda row: None)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert result["history"][0]["train_loss"] == pytest.approx(result["history"][0]["train_loss"])  # finite
    for key, value in adversary.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert value.abs().max() <= cfg.training.eps + 1e-6, key
            assert value.abs().max() > 0, f"{defence}: {key} never moved"


def test_fast_uat_reads_the_delta_gradient_from_the_training_backward(validated, tmp_path):
    cfg, data, model, adversary = _setup(validated, "fast_uat", tmp_path)
    x, y = data.train.float_x()[:32], data.train.y[:32]
    loss, _ = adversary.loss(model, x, y, 0)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    adversary.after_backward()
    step = cfg.training.eps / 10
    assert torch.allclose(adversary.delta.abs().max(), torch.tensor(step))


def test_cb_uat_refresh_warm_starts_the_pool(validated, tmp_path):
    cfg, data, model, adversary = _setup(validated, "cb_uat", tmp_path, ["training.pool_size=3"])
    g = torch.Generator().manual_seed(0)
    adversary.on_epoch_start(model, 0, data.train.x, data.train.y, g)
    first = adversary.pool.clone()
    assert first.shape == (3, 1, 16, 16) and first.abs().max() > 0
    adversary.refresh(model, 1)
    assert adversary.refreshes == 2 and not torch.equal(first, adversary.pool)
    assert model.training  # stage 2 trains again after the refresh


def test_attack_reuses_the_cached_model(cli):
    args = ["dataset=synthetic", "training.epochs=1", "attack.crafting_images=64", "attack.passes=2",
            "eval.num_images=64"]
    first, dir1 = cli(args)
    second, dir2 = cli(args)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert (dir1 / "model.pt").is_file() and not (dir2 / "model.pt").exists()
    assert "using the cached model" in (dir2 / "cbuap.log").read_text()
    for d in (dir1, dir2):
        summary = json.loads((d / "run_summary.json").read_text())
        assert {"fooling_rate", "craft_seconds", "craft_images_processed"} <= set(summary["metrics"])
        assert (d / "perturbation.pt").is_file() and (d / "label_hist.png").is_file()


def test_pipeline_reports_each_attack_and_the_worst(cli):
    proc, run_dir = cli(["task=pipeline", "dataset=synthetic", "training=uat", "training.epochs=1",
                         "training.batch_size=32", "attack.crafting_images=64", "attack.passes=2",
                         "attack.batch_size=32", "eval.num_images=64"])
    assert proc.returncode == 0, proc.stderr
    m = json.loads((run_dir / "run_summary.json").read_text())["metrics"]
    accs = [m[f"adv_acc_{a}"] for a in ("sgd_uap", "uap", "cb_uap")]
    assert m["worst_adv_acc"] == min(accs)
    assert m["worst_class_adv_acc"] <= m["worst_adv_acc"]
    assert all((run_dir / f"perturbation_{a}.pt").is_file() for a in ("sgd_uap", "uap", "cb_uap"))
