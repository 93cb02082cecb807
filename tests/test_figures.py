"""Figures are written (atomically) as non-empty PNG files."""

from __future__ import annotations

import pytest
import torch

from cbuap_runner.figures import TOP_CLASSES, _top_classes, save_label_hist_png, save_perturbation_png, save_transition_png
from cbuap_runner.record import INLINE_CLASSES, per_class_to_file

PNG = b"\x89PNG"


def _ok(path) -> None:
    assert path.exists() and path.stat().st_size > 100 and path.read_bytes()[:4] == PNG
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("delta_shape,channels", [((1, 8, 8), 1), ((3, 8, 8), 3), ((5, 3, 8, 8), 3)])
def test_perturbation_png(tmp_path, delta_shape, channels):
    delta = (torch.rand(delta_shape) - 0.5) * 0.06
    x = torch.rand(6, channels, 8, 8)
    adv = (x + delta if delta.dim() == 3 else x + delta[0]).clamp(0, 1)
    path = tmp_path / "perturbation.png"
    save_perturbation_png(path, delta, (x, adv), [["cat"] * 6, ["cat", "dog"] * 3])
    _ok(path)


def test_perturbation_png_without_examples_and_uint8(tmp_path):
    save_perturbation_png(tmp_path / "a.png", torch.zeros(1, 8, 8))
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    save_perturbation_png(tmp_path / "b.png", torch.rand(1, 8, 8), (x, x))
    _ok(tmp_path / "a.png")
    _ok(tmp_path / "b.png")


def test_label_hist_and_transition_png(tmp_path):
    names = [f"class{i}" for i in range(4)]
    save_label_hist_png(tmp_path / "label_hist.png", [0.25] * 4, [0.7, 0.1, 0.1, 0.1], names)
    save_transition_png(tmp_path / "transition.png", [[5, 1, 0, 0], [0, 3, 2, 0], [0, 0, 4, 0], [1, 0, 0, 4]], names)
    save_transition_png(tmp_path / "t100.png", torch.randint(0, 5, (100, 100)))
    for name in ("label_hist.png", "transition.png", "t100.png"):
        _ok(tmp_path / name)


def test_many_classes_show_the_most_predicted_ones(tmp_path):
    clean, adv = [1.0 / 1000] * 1000, [0.0] * 1000
    adv[7], adv[999] = 0.6, 0.4
    shown = _top_classes(clean, adv)
    assert len(shown) == TOP_CLASSES and {7, 999} <= set(shown.tolist()) and list(shown) == sorted(shown)
    names = [f"n{k:08d}_a_long_wordnet_name" for k in range(1000)]
    save_label_hist_png(tmp_path / "h.png", clean, adv, names)
    save_transition_png(tmp_path / "t.png", torch.eye(1000, dtype=torch.long), names)
    _ok(tmp_path / "h.png")
    _ok(tmp_path / "t.png")


def test_the_transition_matrix_and_long_per_class_lists_go_to_their_own_file(tmp_path):
    import json

    k = INLINE_CLASSES + 1
    matrix = [[0] * k for _ in range(k)]
    matrix[0][3], matrix[2][2] = 5, 1
    metrics = {"adv_acc": 0.5, "transition_matrix": matrix, "per_class_adv_acc": [0.5] * k, "worst_class": 3}
    kept = per_class_to_file(metrics, k, tmp_path, "per_class")
    assert kept == {"adv_acc": 0.5, "worst_class": 3, "per_class_file": "per_class.json"}
    side = json.loads((tmp_path / "per_class.json").read_text())
    assert side["transition_matrix"] == {"shape": [k, k], "cells": [[0, 3, 5], [2, 2, 1]]}
    assert side["per_class_adv_acc"] == [0.5] * k
    few = per_class_to_file({"transition_matrix": [[1, 0], [0, 1]], "per_class_adv_acc": [1.0, 1.0]}, 2, tmp_path,
                            "small")
    assert few == {"per_class_adv_acc": [1.0, 1.0], "per_class_file": "small.json"}  # few classes stay inline
