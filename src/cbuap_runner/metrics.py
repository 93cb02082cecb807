"""Evaluation metrics of docs/method.md (Metrics), accumulated on device in one pass (counts only; one host sync).

Definitions (the contract): c_i clean prediction, a_i adversarial prediction, y_i label.
- clean_acc = mean[c = y]; adv_acc = mean[a = y]
- fooling_rate = mean[a ≠ c] over all samples (Moosavi-Dezfooli)
- attack_success_rate = mean[a ≠ y] over samples with c = y (Benz)
- label_hist h_k = mean[a = k]; label_entropy = H(h)/log K; dominant_label_ratio = max h;
  num_target_labels = #{k: h_k > 1%}
- per-class adv_acc (over samples of true class k) and attack success rate (over correctly classified
  samples of class k); their population std over the classes that have samples; worst class = lowest
  per-class adv_acc; the min and mean over classes of the per-class attack success rate (how unequal the
  attack's strength is between classes). Classes without samples get null.
- fooled_label_entropy (extra): H/log K of the adversarial labels of the fooled samples only; unlike
  label_entropy it does not reach 1 merely because the attack fools nobody.
- transition_matrix[c][a]: counts of clean prediction c → adversarial prediction a (sums to N).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

TARGET_LABEL_THRESHOLD = 0.01


class _Counts:
    """Device-side counters for G perturbations evaluated on the same samples."""

    def __init__(self, num_classes: int, groups: int, device: torch.device) -> None:
        K = num_classes
        self.K, self.G = K, groups
        self.n_y = torch.zeros(K, dtype=torch.long, device=device)
        self.clean_ok_y = torch.zeros(K, dtype=torch.long, device=device)
        self.adv_ok_y = torch.zeros(groups, K, dtype=torch.long, device=device)
        self.success_y = torch.zeros(groups, K, dtype=torch.long, device=device)  # c = y and a ≠ y
        self.transition = torch.zeros(groups, K, K, dtype=torch.long, device=device)

    def add(self, clean_pred: Tensor, adv_pred: Tensor, y: Tensor) -> None:
        """Count one batch; adv_pred is [B] or [G,B]. No host sync."""
        K = self.K
        adv = adv_pred.view(self.G, -1)
        g = torch.arange(self.G, device=y.device).view(-1, 1)
        clean_ok = clean_pred == y
        self.n_y.scatter_add_(0, y, torch.ones_like(y))
        self.clean_ok_y.scatter_add_(0, y, clean_ok.long())
        self.adv_ok_y.view(-1).scatter_add_(0, (g * K + y).view(-1), (adv == y).long().view(-1))
        self.success_y.view(-1).scatter_add_(0, (g * K + y).view(-1), (clean_ok & (adv != y)).long().view(-1))
        flat = (g * K * K + clean_pred * K + adv).view(-1)
        self.transition.view(-1).scatter_add_(0, flat, torch.ones_like(flat))

    def sum_over_ranks(self) -> None:
        """Add up every rank's counts (under torchrun, where each rank counted its share of the images)."""
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            for t in (self.n_y, self.clean_ok_y, self.adv_ok_y, self.success_y, self.transition):
                tdist.all_reduce(t, op=tdist.ReduceOp.SUM)

    def finalize(self, group: int) -> dict[str, Any]:
        """The metric dict of perturbation `group` as plain Python values."""
        return _metrics_from_counts(self.n_y.cpu(), self.clean_ok_y.cpu(), self.adv_ok_y[group].cpu(),
                                    self.success_y[group].cpu(), self.transition[group].cpu())


def _ratio(num: Tensor, den: Tensor) -> list[float | None]:
    """Elementwise num/den with None where den = 0."""
    return [float(a) / float(b) if b > 0 else None for a, b in zip(num.tolist(), den.tolist())]


def _norm_entropy(counts: Tensor) -> float:
    """H(p)/log K of the distribution proportional to `counts` (0 when empty)."""
    total = float(counts.sum())
    if total <= 0:
        return 0.0
    p = counts[counts > 0].double() / total
    return max(0.0, float(-(p * p.log()).sum() / math.log(counts.numel())))


def _mean(values: list[float | None]) -> float | None:
    """Mean of the defined values."""
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def _std(values: list[float | None]) -> float | None:
    """Population std of the defined values."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def _metrics_from_counts(n_y: Tensor, clean_ok_y: Tensor, adv_ok_y: Tensor, success_y: Tensor,
                         transition: Tensor) -> dict[str, Any]:
    """All the metrics (docs/method.md, Metrics) from the per-class counters and the K×K transition counts."""
    N = int(n_y.sum())
    n = max(N, 1)
    t = transition.double()
    adv_hist = (t.sum(0) / n)
    clean_hist = (t.sum(1) / n)
    fooled_hist = t.sum(0) - t.diagonal()  # adversarial labels of the fooled samples (a ≠ c)
    per_class_adv = _ratio(adv_ok_y, n_y)
    per_class_asr = _ratio(success_y, clean_ok_y)
    defined = [(a, k) for k, a in enumerate(per_class_adv) if a is not None]
    worst_acc, worst = min(defined) if defined else (None, None)
    n_ok = int(clean_ok_y.sum())
    return {
        "num_images": N,
        "clean_acc": int(clean_ok_y.sum()) / n,
        "adv_acc": int(adv_ok_y.sum()) / n,
        "fooling_rate": float((t.sum() - t.trace()) / n),
        "attack_success_rate": int(success_y.sum()) / n_ok if n_ok else 0.0,
        "label_hist": adv_hist.tolist(),
        "clean_label_hist": clean_hist.tolist(),
        "label_entropy": _norm_entropy(adv_hist),
        "fooled_label_entropy": _norm_entropy(fooled_hist),
        "dominant_label_ratio": float(adv_hist.max()),
        "dominant_label": int(adv_hist.argmax()),
        "num_target_labels": int((adv_hist > TARGET_LABEL_THRESHOLD).sum()),
        "per_class_clean_acc": _ratio(clean_ok_y, n_y),
        "per_class_adv_acc": per_class_adv,
        "per_class_attack_success_rate": per_class_asr,
        "per_class_adv_acc_std": _std(per_class_adv),
        "per_class_attack_success_rate_std": _std(per_class_asr),
        "min_class_attack_success_rate": min((v for v in per_class_asr if v is not None), default=None),
        "mean_class_attack_success_rate": _mean(per_class_asr),
        "worst_class_adv_acc": worst_acc,
        "worst_class": worst,
        "transition_matrix": transition.long().tolist(),
    }


def metrics_from_predictions(clean_pred: Tensor, adv_pred: Tensor, y: Tensor, num_classes: int) -> dict[str, Any]:
    """The metric dict from prediction tensors [N] (pure; the reference for the batched path)."""
    counts = _Counts(num_classes, 1, y.device)
    counts.add(clean_pred.long(), adv_pred.long().view(1, -1), y.long())
    return counts.finalize(0)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter (or buffer), else `fallback`."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return fallback


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """argmax predictions of `model` over `x`, batched, on x's device, without host syncs."""
    return torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, x.shape[0], batch_size)])


def _as_float(xb: Tensor, device: torch.device) -> Tensor:
    """A batch on `device` as float in [0,1] (uint8 is divided by 255)."""
    xb = xb.to(device, non_blocking=True)
    return xb.float().div_(255) if xb.dtype == torch.uint8 else xb.float()


Images = Tensor | Iterable[tuple[Tensor, Tensor]]  # a tensor (labels beside it), or (images, labels) batches


def _batches(model: nn.Module, x: Images, y: Tensor | None, batch_size: int, device: torch.device):
    """Yield (x_batch float on device, y_batch, clean_pred) of a tensor in batches, or of a loader's batches."""
    source = zip(x.split(batch_size), y.split(batch_size)) if isinstance(x, Tensor) else x
    for xb, yb in source:
        xb = _as_float(xb, device)
        yb = yb.to(device, non_blocking=True).long()
        yield xb, yb, model(xb).argmax(-1)


def evaluate_perturbation(model: nn.Module, x: Images, y: Tensor | None, delta: Tensor, num_classes: int,
                          batch_size: int = 500, class_wise: bool = False, over_ranks: bool = False,
                          predictions: list[Tensor] | None = None) -> dict[str, Any]:
    """The metrics of one δ [C,H,W] (class-wise: [K,C,H,W], sample i gets δ[y_i]) on (x, y); `over_ranks`: each
    rank passed its share of the images, and the counts are summed over the ranks (every image counted once).
    `predictions`: a list that receives the [3,N] stack of labels, clean and adversarial predictions, in order."""
    if delta.dim() == 4 and not class_wise:
        raise ValueError(f"one perturbation expected, got a stack {tuple(delta.shape)}: select a start first")
    device = _model_device(model, delta.device)
    delta = delta.detach().to(device, torch.float32)
    counts = _Counts(num_classes, 1, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            kept = []
            for xb, yb, clean in _batches(model, x, y, batch_size, device):
                d = delta[yb] if class_wise else delta
                adv = model((xb + d).clamp(0, 1)).argmax(-1)
                counts.add(clean, adv.view(1, -1), yb)
                if predictions is not None:
                    kept.append(torch.stack([yb, clean, adv]))
    finally:
        model.train(was_training)
    if predictions is not None:
        predictions.append(torch.cat(kept, dim=1).cpu() if kept else torch.zeros(3, 0, dtype=torch.long))
    if over_ranks:
        counts.sum_over_ranks()
    return counts.finalize(0)


def fooling_rates(model: nn.Module, x: Tensor, delta: Tensor, batch_size: int = 500, *, y: Tensor | None = None,
                  clean: Tensor | None = None) -> list[float]:
    """Fooling rate (a ≠ c) on x of δ [C,H,W], of each row of a stack [M,C,H,W], or, given labels `y`,
    of class-wise δ [K,C,H,W]; `clean` predictions are computed unless given. Model in eval mode."""
    device = _model_device(model, delta.device)
    delta = delta.detach().to(device, torch.float32)
    rows = [delta] if delta.dim() == 3 or y is not None else list(delta)
    fooled = torch.zeros(len(rows), dtype=torch.long, device=device)
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            xb = _as_float(x[i:i + batch_size], device)
            cb = model(xb).argmax(-1) if clean is None else clean[i:i + batch_size]
            for m, d in enumerate(rows):
                d = d[y[i:i + batch_size].to(device)] if y is not None else d
                fooled[m] += (model((xb + d).clamp(0, 1)).argmax(-1) != cb).sum()
    return [int(f) / max(x.shape[0], 1) for f in fooled.tolist()]


def best_start(model: nn.Module, x: Tensor, starts: Tensor, batch_size: int = 500) -> tuple[int, list[float]]:
    """The start of a stack [M,C,H,W] with the highest fooling rate on x (the first among ties), and every rate."""
    was_training = model.training
    model.eval()
    try:
        rates = fooling_rates(model, x, starts, batch_size)
    finally:
        model.train(was_training)
    return max(range(len(rates)), key=rates.__getitem__), rates


def evaluate_clean(model: nn.Module, x: Images, y: Tensor | None, num_classes: int, batch_size: int = 500,
                   over_ranks: bool = False) -> dict[str, Any]:
    """Clean accuracy overall and per class, the worst class and the clean label histogram (`over_ranks`: as in
    evaluate_perturbation)."""
    device = _model_device(model, torch.device("cpu"))
    counts = _Counts(num_classes, 1, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _, yb, clean in _batches(model, x, y, batch_size, device):
                counts.add(clean, clean.view(1, -1), yb)
    finally:
        model.train(was_training)
    if over_ranks:
        counts.sum_over_ranks()
    m = counts.finalize(0)
    per_class = m["per_class_clean_acc"]
    defined = [(a, k) for k, a in enumerate(per_class) if a is not None]
    worst_acc, worst = min(defined) if defined else (None, None)
    return {"num_images": m["num_images"], "clean_acc": m["clean_acc"], "per_class_acc": per_class,
            "per_class_acc_std": _std(per_class), "worst_class_acc": worst_acc, "worst_class": worst,
            "clean_label_hist": m["clean_label_hist"]}
