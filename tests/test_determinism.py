"""Determinism and provenance: the same seed and config on CPU give bit-identical weights and δ, another seed
does not; every run summary records its seed and the git commit it ran from."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from cbuap_runner.job import run_job
from helpers import FAST, REPO, compose_config

TRAIN = ["task=train", "dataset=synthetic", "dataset.synthetic_size=128", "model=small_cnn", "training=uat",
         "training.epochs=2", "training.batch_size=32", "eval.num_images=32"]
ATTACK = ["task=attack", "dataset=synthetic", "dataset.synthetic_size=128", "model=small_cnn", "attack=cb_uap",
          "attack.passes=2", "attack.crafting_images=64", "attack.batch_size=32", "eval.num_images=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Train twice with seed 3 and once with seed 4; attack the first model likewise; evaluate; fail once."""
    tmp = tmp_path_factory.mktemp("determinism")

    def job(name: str, overrides: list[str], fails: bool = False) -> Path:
        overrides = [*FAST, f"cache_dir={tmp / 'cache'}", *overrides]
        try:
            run_job(compose_config(overrides), tmp / name, overrides, False, None)
        except Exception:
            if not fails:
                raise
        return tmp / name

    dirs = {name: job(name, [*TRAIN, f"seed={seed}"]) for name, seed in
            (("train_a", 3), ("train_b", 3), ("train_other_seed", 4))}
    model = dirs["train_a"] / "model.pt"
    dirs.update({name: job(name, [*ATTACK, f"seed={seed}", f"model.checkpoint={model}"]) for name, seed in
                 (("attack_a", 3), ("attack_b", 3), ("attack_other_seed", 4))})
    dirs["evaluate"] = job("evaluate", ["task=evaluate", *ATTACK[1:], "seed=3", f"model.checkpoint={model}",
                                        f"perturbation={dirs['attack_a'] / 'perturbation.pt'}"])
    dirs["failed"] = job("failed", [*TRAIN, "seed=3", "training.init_checkpoint=/nonexistent/model.pt"], fails=True)
    return dirs


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bit_identical_weights_and_training_delta(runs):
    a, b = runs["train_a"], runs["train_b"]
    assert same_tensors(load(a / "model.pt")["state_dict"], load(b / "model.pt")["state_dict"])
    delta_a, delta_b = (load(d / "checkpoint.pt")["adversary"]["delta"] for d in (a, b))
    assert delta_a.abs().sum() > 0 and torch.equal(delta_a, delta_b)  # UAT's δ moved, identically


def test_same_seed_gives_a_bit_identical_perturbation(runs):
    delta_a = load(runs["attack_a"] / "perturbation.pt")["delta"]
    assert delta_a.abs().sum() > 0
    assert torch.equal(delta_a, load(runs["attack_b"] / "perturbation.pt")["delta"])


def test_another_seed_gives_other_weights_and_perturbation(runs):
    assert not same_tensors(load(runs["train_a"] / "model.pt")["state_dict"],
                            load(runs["train_other_seed"] / "model.pt")["state_dict"])
    assert not torch.equal(load(runs["attack_a"] / "perturbation.pt")["delta"],
                           load(runs["attack_other_seed"] / "perturbation.pt")["delta"])


def test_every_run_summary_records_seed_and_git_commit(runs):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert len(head) == 40  # the tests run from a git checkout
    for name, run_dir in runs.items():
        summary = json.loads((run_dir / "run_summary.json").read_text())
        assert summary["status"] == ("failed" if name == "failed" else "completed"), name
        assert summary["seed"] == (4 if name.endswith("other_seed") else 3), name
        assert summary["config"]["seed"] == summary["seed"], name
        assert summary["git_commit"] in (head, f"{head}-dirty"), name
        assert {"python", "torch"} <= summary["versions"].keys(), name
