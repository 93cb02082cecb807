"""A paired bootstrap over test images: how much a difference between two perturbations of one seed (one network,
one set of test images) depends on which test images were drawn.

Reads the per-image predictions a run writes with `eval.save_predictions=true` (`predictions.npz` beside its
`run_summary.json`: each test image's label, clean prediction and adversarial prediction). The test images are
resampled with replacement RESAMPLES times (seeded); on each resample both runs' metric is recomputed on the same
images and their difference taken; the interval is the 2.5th to 97.5th percentile of those differences (the
percentile interval, Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13). It speaks of the
test images only: the seed's network and crafting images are held fixed, which the per-seed t-interval covers.
The metrics follow metrics.py's definitions.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .significance import Paired

RESAMPLES = 2000
SEED = 0
CHUNK = 100  # resamples computed at once


@dataclass(frozen=True)
class Predictions:
    """One run's test images: label, clean and adversarial prediction per image, and the number of classes."""

    label: np.ndarray
    clean: np.ndarray
    adv: np.ndarray
    num_classes: int


def load_predictions(record: Mapping[str, Any]) -> Predictions | None:
    """The predictions a record's run saved (None where it saved none); the number of classes from its label
    histogram. ValueError naming the file when it is unreadable."""
    metrics = record.get("metrics") or {}
    name, folder = metrics.get("predictions_file"), record.get("_path")
    if not name or not folder:
        return None
    path = Path(folder) / name
    try:
        with np.load(path) as data:
            arrays = [np.asarray(data[k], dtype=np.int64) for k in ("label", "clean", "adv")]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a predictions file ({err})") from err
    return Predictions(*arrays, num_classes=len(metrics.get("label_hist") or []) or int(arrays[0].max()) + 1)


def _entropy(counts: np.ndarray, num_classes: int) -> np.ndarray:
    """H(p)/log K of each row of label counts (0 for a row without labels)."""
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)
    logs = np.log(p, out=np.zeros(p.shape), where=p > 0)
    return -(p * logs).sum(axis=1) / np.log(num_classes)


def _counts(labels: np.ndarray, weights: np.ndarray, num_classes: int) -> np.ndarray:
    """[R,K] histogram of `labels` [R,N] per row, each image counted with its weight."""
    rows = np.arange(labels.shape[0])[:, None] * num_classes
    flat = np.bincount((rows + labels).ravel(), weights=weights.ravel(), minlength=labels.shape[0] * num_classes)
    return flat.reshape(labels.shape[0], num_classes)


def fooling_rate(p: Predictions, idx: np.ndarray) -> np.ndarray:
    return (p.adv[idx] != p.clean[idx]).mean(axis=1)


def adv_acc(p: Predictions, idx: np.ndarray) -> np.ndarray:
    return (p.adv[idx] == p.label[idx]).mean(axis=1)


def label_entropy(p: Predictions, idx: np.ndarray) -> np.ndarray:
    adv = p.adv[idx]
    return _entropy(_counts(adv, np.ones(adv.shape), p.num_classes), p.num_classes)


def fooled_label_entropy(p: Predictions, idx: np.ndarray) -> np.ndarray:
    adv = p.adv[idx]
    return _entropy(_counts(adv, (adv != p.clean[idx]).astype(float), p.num_classes), p.num_classes)


METRICS: dict[str, Callable[[Predictions, np.ndarray], np.ndarray]] = {
    "fooling_rate": fooling_rate, "adv_acc": adv_acc, "label_entropy": label_entropy,
    "fooled_label_entropy": fooled_label_entropy}


def paired_bootstrap(a: Predictions, b: Predictions, name: str, resamples: int = RESAMPLES,
                     seed: int = SEED) -> Paired:
    """b − a of metric `name` on all test images, with the percentile interval over `resamples` paired
    resamples (n: the number of test images). ValueError unless both runs saw the same images in one order."""
    if not np.array_equal(a.label, b.label):
        raise ValueError("bootstrap: the two runs were not scored on the same test images in the same order")
    metric, n = METRICS[name], len(a.label)
    whole = np.arange(n)[None, :]
    observed = float((metric(b, whole) - metric(a, whole))[0])
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, CHUNK):
        idx = rng.integers(0, n, size=(min(CHUNK, resamples - start), n))
        diffs.append(metric(b, idx) - metric(a, idx))
    low, high = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    return Paired(observed, float(low), float(high), n)
