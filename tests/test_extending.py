"""Adding an attack from outside the package: its code and its config node, registered here and nowhere else,
run through the command-line entry point (docs/design.md, Extending)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra

from cbuap_runner.__main__ import main
from cbuap_runner.attacks import ATTACKS, AttackSpec, CraftResult, apply_delta, make_threat, register_attack
from cbuap_runner.schema import AttackConfig
from helpers import FAST, TINY


def craft_fgsm_uap(model, x, y, cfg: AttackConfig, num_classes: int, **_) -> CraftResult:
    """One signed step of size ε along the crafting set's mean input gradient of the cross-entropy."""
    delta = torch.zeros(x.shape[1:], device=x.device, requires_grad=True)
    loss = F.cross_entropy(model(apply_delta(x, delta)), y)
    (grad,) = torch.autograd.grad(loss, delta)
    threat = make_threat(cfg.norm, cfg.eps)
    step = torch.zeros_like(grad)
    threat.step_(step, grad, cfg.eps)
    return CraftResult(delta=threat.project_(step), converged=True, passes=1, images_processed=x.shape[0],
                       history=[{"pass": 1, "objective": float(loss.detach()), "fooling_rate": None}])


@pytest.fixture
def fgsm_uap():
    """The attack and its config node `attack=fgsm_uap`, registered for this test only."""
    register_attack("fgsm_uap", AttackSpec(craft_fgsm_uap, frozenset()))
    store = ConfigStore.instance()
    store.store(group="attack", name="fgsm_uap", node=AttackConfig(name="fgsm_uap"))
    yield
    ATTACKS.pop("fgsm_uap")
    store.repo["attack"].pop("fgsm_uap.yaml")


def test_an_attack_defined_outside_the_package_runs_through_the_cli(fgsm_uap, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["cbuap", "attack=fgsm_uap", *FAST, *TINY, f"hydra.run.dir={run_dir}",
                                      f"cache_dir={tmp_path / 'cache'}", "logger.mode=disabled"])
    GlobalHydra.instance().clear()
    try:
        main()
    finally:
        GlobalHydra.instance().clear()
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "completed" and summary["attack"] == "fgsm_uap"
    assert 0 <= summary["metrics"]["fooling_rate"] <= 1
    blob = torch.load(run_dir / "perturbation.pt", weights_only=True)
    assert blob["attack"] == "fgsm_uap" and blob["delta"].abs().max() <= blob["eps"] + 1e-6
    for name in ("metrics.jsonl", "perturbation.png", "label_hist.png", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name


def test_an_unregistered_attack_name_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cbuap", "attack=fgsm_uap", *FAST, *TINY, f"hydra.run.dir={tmp_path / 'run'}"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_:
        main()
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and err[0].startswith("error: attack=fgsm_uap")
