"""Figures are written (atomically) as non-empty PNG files."""

from __future__ import annotations

import pytest
import torch

from cbuap_runner.figures import save_label_hist_png, save_perturbation_png, save_transition_png

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
    save_perturbation_png(path, delta, x, adv)
    _ok(path)


def test_perturbation_png_without_examples_and_uint8(tmp_path):
    save_perturbation_png(tmp_path / "a.png", torch.zeros(1, 8, 8))
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    save_perturbation_png(tmp_path / "b.png", torch.rand(1, 8, 8), x, x)
    _ok(tmp_path / "a.png")
    _ok(tmp_path / "b.png")


def test_label_hist_and_transition_png(tmp_path):
    names = [f"class{i}" for i in range(4)]
    save_label_hist_png(tmp_path / "label_hist.png", [0.25] * 4, [0.7, 0.1, 0.1, 0.1], names)
    save_transition_png(tmp_path / "transition.png", [[5, 1, 0, 0], [0, 3, 2, 0], [0, 0, 4, 0], [1, 0, 0, 4]], names)
    save_transition_png(tmp_path / "t100.png", torch.randint(0, 5, (100, 100)))
    for name in ("label_hist.png", "transition.png", "t100.png"):
        _ok(tmp_path / name)
