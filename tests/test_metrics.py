"""Metrics of docs/method.md (Metrics) against hand-computed values, and the batched device path against the pure one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cbuap_runner.metrics import evaluate_clean, evaluate_perturbation, fooling_rates, metrics_from_predictions

#                   0  1  2  3  4  5
Y = torch.tensor([0, 0, 1, 1, 2, 2])
CLEAN = torch.tensor([0, 0, 1, 2, 2, 2])  # sample 3 is misclassified before the attack
ADV = torch.tensor([1, 0, 1, 1, 0, 2])  # sample 3 is "fooled" (a ≠ c) back onto its true label


def _h(p: list[float]) -> float:
    return -sum(v * math.log(v) for v in p if v > 0) / math.log(len(p))


def test_hand_computed_example():
    m = metrics_from_predictions(CLEAN, ADV, Y, 3)
    assert m["num_images"] == 6
    assert m["clean_acc"] == pytest.approx(5 / 6)
    assert m["adv_acc"] == pytest.approx(4 / 6)
    # fooling rate counts sample 3 (a ≠ c); attack success rate excludes it (c ≠ y) and counts a ≠ y
    assert m["fooling_rate"] == pytest.approx(3 / 6)
    assert m["attack_success_rate"] == pytest.approx(2 / 5)
    assert m["label_hist"] == pytest.approx([2 / 6, 3 / 6, 1 / 6])
    assert m["clean_label_hist"] == pytest.approx([2 / 6, 1 / 6, 3 / 6])
    assert m["label_entropy"] == pytest.approx(_h([2 / 6, 3 / 6, 1 / 6]))
    assert m["fooled_label_entropy"] == pytest.approx(_h([1 / 3, 2 / 3, 0]))
    assert m["dominant_label_ratio"] == pytest.approx(0.5) and m["dominant_label"] == 1
    assert m["num_target_labels"] == 3
    assert m["per_class_adv_acc"] == pytest.approx([0.5, 1.0, 0.5])
    assert m["per_class_attack_success_rate"] == pytest.approx([0.5, 0.0, 0.5])
    assert m["per_class_clean_acc"] == pytest.approx([1.0, 0.5, 1.0])
    assert m["per_class_adv_acc_std"] == pytest.approx(math.sqrt(1 / 18))
    assert m["worst_class_adv_acc"] == pytest.approx(0.5) and m["worst_class"] == 0
    assert m["transition_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 1, 1]]


def test_transition_sums_to_n_and_absent_classes_are_null():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (40,), generator=g)  # class 3 of K=4 never occurs
    c = torch.randint(0, 4, (40,), generator=g)
    a = torch.randint(0, 4, (40,), generator=g)
    m = metrics_from_predictions(c, a, y, 4)
    assert sum(map(sum, m["transition_matrix"])) == 40
    assert m["per_class_adv_acc"][3] is None and m["worst_class"] != 3
    assert sum(m["label_hist"]) == pytest.approx(1.0)


def test_no_attack_means_no_fooling():
    m = metrics_from_predictions(CLEAN, CLEAN, Y, 3)
    assert m["fooling_rate"] == 0 and m["attack_success_rate"] == 0 and m["fooled_label_entropy"] == 0
    assert m["adv_acc"] == m["clean_acc"]


@pytest.fixture(scope="module")
def model_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    y = torch.randint(0, 5, (50,))
    return model, x, y


def test_batched_evaluation_matches_pure_function(model_data):
    model, x, y = model_data
    delta = (torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.6
    x0 = x.clone()
    m = evaluate_perturbation(model, x, y, delta, 5, batch_size=7)
    assert torch.equal(x, x0)
    xf = x.float() / 255
    with torch.no_grad():
        ref = metrics_from_predictions(model(xf).argmax(1), model((xf + delta).clamp(0, 1)).argmax(1), y, 5)
    assert m == ref
    assert m["fooling_rate"] > 0


def test_fooling_rates_per_start_and_class_wise(model_data):
    model, x, y = model_data
    strong = (torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.6
    rates = fooling_rates(model, x, torch.stack([torch.zeros(3, 4, 4), strong]), batch_size=16)
    assert rates == [0.0, evaluate_perturbation(model, x, y, strong, 5)["fooling_rate"]] and rates[1] > 0
    deltas = torch.zeros(5, 3, 4, 4)
    deltas[2] = strong
    cw = fooling_rates(model, x, deltas, batch_size=16, y=y)
    assert cw == [evaluate_perturbation(model, x, y, deltas, 5, class_wise=True)["fooling_rate"]]


def test_class_wise_delta_uses_the_true_label(model_data):
    model, x, y = model_data
    deltas = torch.zeros(5, 3, 4, 4)
    deltas[2] = 0.5
    m = evaluate_perturbation(model, x, y, deltas, 5, class_wise=True)
    xf = x.float() / 255
    with torch.no_grad():
        ref = metrics_from_predictions(model(xf).argmax(1), model((xf + deltas[y]).clamp(0, 1)).argmax(1), y, 5)
    assert m == ref


def test_evaluate_clean(model_data):
    model, x, y = model_data
    model.train()
    m = evaluate_clean(model, x, y, 5, batch_size=9)
    assert model.training  # mode restored
    with torch.no_grad():
        pred = model(x.float() / 255).argmax(1)
    assert m["clean_acc"] == pytest.approx(float((pred == y).float().mean()))
    per = [float((pred[y == k] == k).float().mean()) if (y == k).any() else None for k in range(5)]
    assert m["per_class_acc"] == pytest.approx(per)
    assert m["worst_class_acc"] == pytest.approx(min(p for p in per if p is not None))
    assert per[m["worst_class"]] == pytest.approx(m["worst_class_acc"])
