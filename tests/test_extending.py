"""Adding an attack from outside the package: its schema (with a key of its own), its code and its config node,
registered here and nowhere else, run through the command-line entry point (docs/design.md, Extending)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra

from cbuap_runner.__main__ import main
from cbuap_runner.attacks import ATTACKS, AttackSpec, CraftResult, apply_delta, make_threat, register_attack
from cbuap_runner.schema import AttackConfig
from helpers import FAST, TINY


@dataclass
class FGSMUAPConfig(AttackConfig):
    """The shared keys and one of its own."""

    steps: int = 1  # signed steps of size ε / steps along the crafting set's mean input gradient


def craft_fgsm_uap(model, x, y, cfg: FGSMUAPConfig, num_classes: int, **_) -> CraftResult:
    """`steps` signed steps of size ε / steps along the crafting set's mean input gradient of the cross-entropy."""
    threat = make_threat(cfg.norm, cfg.eps)
    delta = torch.zeros(x.shape[1:], device=x.device, requires_grad=True)
    history = []
    for i in range(cfg.steps):
        loss = F.cross_entropy(model(apply_delta(x, delta)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            threat.step_(delta.data, grad, cfg.eps / cfg.steps)
            threat.project_(delta.data)
        history.append({"pass": i + 1, "objective": float(loss.detach()), "fooling_rate": None})
    return CraftResult(delta=delta.detach(), converged=True, passes=cfg.steps, images_processed=x.shape[0] * cfg.steps,
                       history=history)


@pytest.fixture
def fgsm_uap():
    """The attack, its schema and its config node `attack=fgsm_uap`, registered for this test only."""
    register_attack("fgsm_uap", AttackSpec(craft_fgsm_uap, FGSMUAPConfig))
    store = ConfigStore.instance()
    store.store(group="attack", name="fgsm_uap", node=FGSMUAPConfig(name="fgsm_uap"))
    yield
    ATTACKS.pop("fgsm_uap")
    store.repo["attack"].pop("fgsm_uap.yaml")
    store.repo.get("schema", {}).get("attack", {}).pop("fgsm_uap.yaml", None)


def _main(argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cbuap", *argv])
    GlobalHydra.instance().clear()
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


def test_an_attack_defined_outside_the_package_runs_through_the_cli(fgsm_uap, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _main(["attack=fgsm_uap", "attack.steps=2", *FAST, *TINY, f"hydra.run.dir={run_dir}",
           f"cache_dir={tmp_path / 'cache'}", "logger.mode=disabled"], monkeypatch)
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "completed" and summary["attack"] == "fgsm_uap"
    assert summary["config"]["attack"]["steps"] == 2 and summary["metrics"]["craft_passes"] == 2
    assert 0 <= summary["metrics"]["fooling_rate"] <= 1
    blob = torch.load(run_dir / "perturbation.pt", weights_only=True)
    assert blob["attack"] == "fgsm_uap" and blob["delta"].abs().max() <= blob["eps"] + 1e-6
    for name in ("metrics.jsonl", "perturbation.png", "label_hist.png", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name


def test_its_key_given_to_another_attack_is_one_line_naming_it(fgsm_uap, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        _main(["attack=sgd_uap", "attack.steps=2", *FAST, *TINY, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1
    assert err == ["error: attack.steps: attack=sgd_uap has no such key; attack=fgsm_uap has it"]


def test_an_unregistered_attack_name_is_one_error_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        _main(["attack=fgsm_uap", *FAST, *TINY, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and err[0].startswith("error: attack=fgsm_uap")
