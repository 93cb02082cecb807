"""A paired bootstrap over test images: how much a difference between two perturbations of one seed (one network,
one set of test images), or between two defences of one seed under their attacks, depends on which test images
were drawn.

Reads the per-image predictions a run writes with `eval.save_predictions=true` (`predictions.npz` beside its
`run_summary.json`, a pipeline `predictions_<attack>.npz` per attack: each test image's label, clean prediction and
adversarial prediction). A defence's worst case is recomputed on each resample as its lowest accuracy over its
universal attacks, as the pipeline reports it. The test images are
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
    return _load(record.get("metrics") or {}, record.get("_path"))


def load_defence_predictions(record: Mapping[str, Any]) -> dict[str, Predictions] | None:
    """A pipeline run's predictions under each universal attack it reports (a class-wise attack is not in its worst
    case), by attack; None unless it saved them for every one."""
    attacks = (record.get("metrics") or {}).get("attacks") or {}
    universal = {name: m for name, m in attacks.items() if not m.get("class_wise")}
    found = {name: _load(m, record.get("_path")) for name, m in universal.items()}
    return found if found and all(p is not None for p in found.values()) else None


def _load(metrics: Mapping[str, Any], folder: str | None) -> Predictions | None:
    name = metrics.get("predictions_file")
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
    _same_images([a, b])
    metric = METRICS[name]
    return _resampled(lambda idx: metric(b, idx) - metric(a, idx), len(a.label), resamples, seed)


def worst_case_accuracy(runs: Mapping[str, Predictions], idx: np.ndarray) -> np.ndarray:
    """The lowest accuracy under attack over a defence's attacks, on each row of image indices."""
    return np.min([adv_acc(p, idx) for p in runs.values()], axis=0)


def clean_accuracy(p: Predictions, idx: np.ndarray) -> np.ndarray:
    return (p.clean[idx] == p.label[idx]).mean(axis=1)


def paired_defence_bootstrap(a: Mapping[str, Predictions], b: Mapping[str, Predictions],
                             resamples: int = RESAMPLES, seed: int = SEED) -> tuple[Paired, Paired]:
    """b − a of the worst-case accuracy (each defence's lowest over its own attacks, on the same resampled images)
    and of the clean accuracy, with their percentile intervals. ValueError unless every run saw the same images."""
    _same_images([*a.values(), *b.values()])
    first_a, first_b = next(iter(a.values())), next(iter(b.values()))
    n = len(first_a.label)
    worst = _resampled(lambda idx: worst_case_accuracy(b, idx) - worst_case_accuracy(a, idx), n, resamples, seed)
    clean = _resampled(lambda idx: clean_accuracy(first_b, idx) - clean_accuracy(first_a, idx), n, resamples, seed)
    return worst, clean


def bootstrap_clause(seed: Any, name: str, worst: Paired, clean: Paired) -> str:
    """'over the N test images of seed s, … : <name> d [lo, hi], clean d [lo, hi] points' (accuracies in points)."""
    return (f"over the {worst.n:,} test images of seed {seed}, {RESAMPLES:,} paired bootstrap resamples, 95 % "
            f"percentile intervals: {name} {worst.text(100, 1)}, clean {clean.text(100, 1)} points")


def _same_images(runs: list[Predictions]) -> None:
    if any(not np.array_equal(runs[0].label, p.label) for p in runs[1:]):
        raise ValueError("bootstrap: the two runs were not scored on the same test images in the same order")


def _resampled(difference: Callable[[np.ndarray], np.ndarray], n: int, resamples: int, seed: int) -> Paired:
    """The difference on all n images, and its 2.5th-97.5th percentile over `resamples` resamples of them (each
    row of indices one resample, drawn with replacement from a generator seeded with `seed`)."""
    observed = float(difference(np.arange(n)[None, :])[0])
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, CHUNK):
        idx = rng.integers(0, n, size=(min(CHUNK, resamples - start), n))
        diffs.append(difference(idx))
    low, high = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    return Paired(observed, float(low), float(high), n)
