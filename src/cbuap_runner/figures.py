"""Figures for attack runs: the perturbation beside examples, label histograms, the transition matrix.

Matplotlib with the Agg backend; every figure is closed after saving and written atomically.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

MAX_DELTAS = 4
MAX_EXAMPLES = 4


def _to_image(t: Tensor) -> np.ndarray:
    """[C,H,W] in [0,1] → an array imshow accepts (H,W) or (H,W,3)."""
    t = t.detach().float().cpu().clamp(0, 1)
    return t[0].numpy() if t.shape[0] == 1 else t[:3].permute(1, 2, 0).numpy()


def _amplify(delta: Tensor) -> Tensor:
    """Map δ to [0,1] for display: 0.5 + δ / (2·max|δ|)."""
    d = delta.detach().float().cpu()
    return 0.5 + d / (2 * d.abs().max().clamp_min(1e-12))


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    """Save `fig` as PNG atomically and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)


def save_perturbation_png(path: str | os.PathLike, delta: Tensor, x_examples: Tensor | None = None,
                          adv_examples: Tensor | None = None) -> None:
    """δ amplified to be visible (first few of a stack) above a few clean/adversarial example pairs."""
    deltas = delta.unsqueeze(0) if delta.dim() == 3 else delta
    deltas = deltas[:MAX_DELTAS]
    n_ex = 0 if x_examples is None else min(MAX_EXAMPLES, x_examples.shape[0])
    cols = max(deltas.shape[0], n_ex, 1)
    rows = 1 + (2 if n_ex else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, d in enumerate(deltas):
        cmap = "seismic" if d.shape[0] == 1 else None
        axes[0, i].imshow(_to_image(_amplify(d)), cmap=cmap, vmin=0, vmax=1)
        axes[0, i].set_title(f"δ[{i}] (amplified)" if deltas.shape[0] > 1 else "δ (amplified)", fontsize=8)
    for i in range(n_ex):
        for r, (imgs, name) in enumerate(((x_examples, "clean"), (adv_examples, "adversarial")), start=1):
            if imgs is None:
                continue
            img = imgs[i].float() / 255 if imgs.dtype == torch.uint8 else imgs[i]
            axes[r, i].imshow(_to_image(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            axes[r, i].set_title(name, fontsize=8)
    _save(fig, path)


def save_label_hist_png(path: str | os.PathLike, clean_hist: Sequence[float], adv_hist: Sequence[float],
                        class_names: Sequence[str] | None = None) -> None:
    """Bar chart of the predicted-label distribution, clean vs adversarial."""
    K = len(clean_hist)
    idx = np.arange(K)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * K), 3.5))
    ax.bar(idx - 0.2, clean_hist, width=0.4, label="clean")
    ax.bar(idx + 0.2, adv_hist, width=0.4, label="adversarial")
    ax.set_ylabel("fraction of predictions")
    if class_names is not None and K <= 20:
        ax.set_xticks(idx, list(class_names), rotation=45, ha="right", fontsize=8)
    ax.legend()
    _save(fig, path)


def save_transition_png(path: str | os.PathLike, matrix: Sequence[Sequence[float]] | Tensor,
                        class_names: Sequence[str] | None = None) -> None:
    """Heat map of clean-prediction → adversarial-prediction counts (rows: clean)."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=float)
    K = m.shape[0]
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * K), max(4, 0.4 * K)))
    im = ax.imshow(m, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("adversarial prediction")
    ax.set_ylabel("clean prediction")
    if class_names is not None and K <= 20:
        ax.set_xticks(range(K), list(class_names), rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(K), list(class_names), fontsize=7)
    _save(fig, path)
