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
TOP_CLASSES = 20  # past this many classes, the histogram and the transition matrix show the most predicted ones


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


def save_perturbation_png(path: str | os.PathLike, delta: Tensor, examples: tuple[Tensor, Tensor] | None = None,
                          predicted: Sequence[Sequence[str]] | None = None) -> None:
    """δ amplified to be visible (first few of a stack) above a few clean/adversarial example pairs, each titled
    with the class the network gives it (`predicted`: clean names, adversarial names)."""
    deltas = delta.unsqueeze(0) if delta.dim() == 3 else delta
    deltas = deltas[:MAX_DELTAS]
    x_examples, adv_examples = examples if examples is not None else (None, None)
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
            label = name if predicted is None else f"{name}: {_short(predicted[r - 1][i])}"
            if predicted is not None and r == 2 and predicted[1][i] != predicted[0][i]:
                label += " (fooled)"
            axes[r, i].set_title(label, fontsize=7)
    _save(fig, path)


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def _top_classes(*counts: Sequence[float]) -> np.ndarray:
    """All classes up to TOP_CLASSES; else the TOP_CLASSES most predicted in any of `counts`, in class order."""
    k = len(counts[0])
    if k <= TOP_CLASSES:
        return np.arange(k)
    peak = np.max(np.stack([np.asarray(c, dtype=float) for c in counts]), axis=0)
    return np.sort(np.argsort(-peak, kind="stable")[:TOP_CLASSES])


def _class_labels(shown: np.ndarray, class_names: Sequence[str] | None) -> list[str]:
    return [_short(class_names[k]) if class_names is not None else str(k) for k in shown]


def save_label_hist_png(path: str | os.PathLike, clean_hist: Sequence[float], adv_hist: Sequence[float],
                        class_names: Sequence[str] | None = None) -> None:
    """Bar chart of the predicted-label distribution, clean vs adversarial (the most predicted classes past
    TOP_CLASSES)."""
    shown = _top_classes(clean_hist, adv_hist)
    idx = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(shown)), 3.5))
    ax.bar(idx - 0.2, np.asarray(clean_hist)[shown], width=0.4, label="clean")
    ax.bar(idx + 0.2, np.asarray(adv_hist)[shown], width=0.4, label="adversarial")
    ax.set_ylabel("fraction of predictions")
    ax.set_xticks(idx, _class_labels(shown, class_names), rotation=45, ha="right", fontsize=8)
    if len(shown) < len(clean_hist):
        ax.set_title(f"the {len(shown)} most predicted of {len(clean_hist)} classes", fontsize=9)
    ax.legend()
    _save(fig, path)


def save_transition_png(path: str | os.PathLike, matrix: Sequence[Sequence[float]] | Tensor,
                        class_names: Sequence[str] | None = None) -> None:
    """Heat map of clean-prediction → adversarial-prediction counts (rows: clean)."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=float)
    shown = _top_classes(m.sum(1), m.sum(0))
    k = len(shown)
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * k), max(4, 0.4 * k)))
    im = ax.imshow(m[np.ix_(shown, shown)], cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("adversarial prediction")
    ax.set_ylabel("clean prediction")
    labels = _class_labels(shown, class_names)
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), labels, fontsize=7)
    if k < m.shape[0]:
        ax.set_title(f"the {k} most predicted of {m.shape[0]} classes", fontsize=9)
    _save(fig, path)
