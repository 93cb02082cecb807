"""DeepFool and DeepFool-UAP (attack=uap) against closed forms and a per-image reference loop.

The reference loop below is a literal, one-image-at-a-time transcription of the authors' universal_pert.py
and deepfool.py (their acceptance test `iter < max_iter_df - 1`; the [0,1] pixel range met as `deepfool.clamp`
says; the L2 projection into the ball); the batched implementation must give the same perturbation.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from cbuap_runner.attacks import deepfool_uap
from cbuap_runner.attacks.deepfool_uap import DeepFoolConfig, DeepFoolUAPConfig, craft_deepfool_uap, deepfool
from toy import SHAPE, K, train_toy_model


@pytest.fixture(scope="module")
def task():
    """The toy model in float64 (so that batched and per-image kernels agree closely)."""
    return train_toy_model(torch.float64)


def cfg_(*, deepfool: dict | None = None, **kw) -> DeepFoolUAPConfig:
    base = {"name": "uap", "eps": 0.04, "passes": 2, "batch_size": 64, "deepfool": DeepFoolConfig(**(deepfool or {})),
            **kw}
    return DeepFoolUAPConfig(**base)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the per-image reference
def ref_point(image: torch.Tensor, clamp: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the leaf to differentiate in, what the model sees) at the point `image`, for each `deepfool.clamp`."""
    if clamp == "point":
        leaf = image.clamp(0, 1).detach().requires_grad_(True)
        return leaf, leaf
    leaf = image.detach().requires_grad_(True)
    return leaf, leaf.clamp(0, 1)


def ref_deepfool(model: nn.Module, image: torch.Tensor, *, num_classes: int, overshoot: float, max_iter: int,
                 norm: str, clamp: str = "held") -> tuple[torch.Tensor, int, int, int]:
    """deepfool.py for one image [1,C,H,W] (one backward per candidate): (step, iterations, label, new label)."""
    f_i = model(ref_point(image, clamp)[1])[0].detach()
    index = f_i.argsort(descending=True)[:num_classes].tolist()
    label = k_i = index[0]
    pert_image = image
    r_tot = torch.zeros_like(image)
    loop_i = 0
    while k_i == label and loop_i < max_iter:
        grads = []
        for c in index:
            leaf, seen = ref_point(pert_image, clamp)
            grads.append(torch.autograd.grad(model(seen)[0, c], leaf)[0])
        pert, w, f = float("inf"), None, None
        for k in range(1, len(index)):
            w_k = grads[k] - grads[0]
            f_k = float(f_i[index[k]] - f_i[index[0]])
            pert_k = abs(f_k) / float(w_k.norm() if norm == "l2" else w_k.abs().sum())
            if pert_k < pert:
                pert, w, f = pert_k, w_k, f_k
        if norm == "l2":
            r_i = (pert + 1e-4) * w / w.norm()
        else:
            r_i = (abs(f) + 1e-4) / w.abs().sum() * w.sign()
        r_tot = r_tot + r_i
        pert_image = image + (1 + overshoot) * r_tot
        loop_i += 1
        f_i = model(ref_point(pert_image, clamp)[1])[0].detach()
        k_i = int(f_i.argmax())
    return (1 + overshoot) * r_tot, loop_i, label, k_i


def ref_project(v: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Onto the L∞ box, or into the L2 ball."""
    if norm == "linf":
        return v.clamp(-eps, eps)
    return v * min(1.0, eps / float(v.norm()))


def ref_universal(model: nn.Module, x: torch.Tensor, cfg: DeepFoolUAPConfig, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """universal_pert.py, one image at a time, for cfg.passes passes: (v, DeepFool steps added)."""
    v, added = torch.zeros_like(x[0]), 0
    for _ in range(cfg.passes):
        for k in torch.randperm(x.shape[0], generator=generator).tolist():
            cur = x[k:k + 1]
            if int(model(cur).argmax()) == int(model((cur + v).clamp(0, 1)).argmax()):
                dr, iters, _, _ = ref_deepfool(model, cur + v, num_classes=cfg.deepfool.candidates,
                                               overshoot=cfg.deepfool.overshoot, max_iter=cfg.deepfool.iters,
                                               norm=cfg.deepfool.norm, clamp=cfg.deepfool.clamp)
                if iters < cfg.deepfool.iters - 1:  # "Make sure it converged..."
                    v = ref_project(v + dr[0], cfg.eps, cfg.norm)
                    added += 1
    return v, added


# ---------------------------------------------------------------- (a) DeepFool on an affine classifier
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_on_affine_model_is_the_closed_form(norm):
    torch.manual_seed(0)
    lin = nn.Linear(64, 5).double()
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.5 + 0.02 * torch.randn(6, 1, 8, 8, dtype=torch.float64)
    res = deepfool(model, x, norm=norm, num_candidates=10, overshoot=0.02, max_iter=10)
    W, b = lin.weight.detach(), lin.bias.detach()
    for i in range(x.shape[0]):
        f = W @ x[i].flatten() + b
        c = int(f.argmax())
        best, step = float("inf"), None
        for k in range(5):
            if k == c:
                continue
            w = W[k] - W[c]
            gap = float(abs(f[k] - f[c]))
            dual = float(w.norm() if norm == "l2" else w.abs().sum())
            if gap / dual < best:
                best = gap / dual
                step = (gap / dual + 1e-4) * w / dual if norm == "l2" else (gap + 1e-4) / dual * w.sign()
        assert bool(res.converged[i]) and int(res.iters[i]) == 1
        assert torch.allclose(res.step[i].flatten(), 1.02 * step, rtol=1e-9, atol=1e-12)
        assert ((x[i] + res.step[i]) > 0).all() and ((x[i] + res.step[i]) < 1).all()  # the clamp stayed inactive


# ---------------------------------------------------------------- (b) batching is exact
def _concave_batch() -> torch.Tensor:
    """Concave-model inputs from t = 0 to t = 0.68: DeepFool needs from 3 iterations down to 1."""
    offsets = torch.linspace(0, 0.068, 12, dtype=torch.float64).view(-1, 1, 1, 1)
    return 0.5 + offsets + 0.005 * torch.randn(12, 1, 4, 4, generator=gen(1), dtype=torch.float64)


@pytest.mark.parametrize("which", ["mlp", "concave"])
def test_batched_deepfool_equals_per_image_runs(task, which):
    model, xb, classes = (task[0], task[1][:24] + 0.02, 3) if which == "mlp" else (Concave(), _concave_batch(), 2)
    res = deepfool(model, xb, num_candidates=3, max_iter=2)
    for i in range(xb.shape[0]):
        step, iters, label, k_i = ref_deepfool(model, xb[i:i + 1], num_classes=classes, overshoot=0.02, max_iter=2,
                                               norm="l2")
        assert int(res.iters[i]) == iters and bool(res.converged[i]) == (k_i != label) and int(res.label[i]) == k_i
        assert torch.allclose(res.step[i], step[0], atol=1e-10)
    if which == "concave":
        assert 0 < int(res.converged.sum()) < xb.shape[0]  # both outcomes occur
        # later rows converge in 1 iteration, earlier ones in 2, the first ones not at all
        first = deepfool(model, xb, max_iter=2, first_only=True)
        j = int(res.converged.nonzero()[0, 0])
        assert int(res.iters[j]) == 2 and int(res.iters[-1]) == 1
        assert torch.equal(first.converged, torch.arange(xb.shape[0]) == j)  # the rows after j are abandoned
        assert torch.allclose(first.step[:j + 1], res.step[:j + 1], atol=1e-12)


@pytest.mark.parametrize("adaptive,min_width", [(False, 1), (True, 1), (False, 8)])
@pytest.mark.parametrize("extra", [dict(norm="linf", eps=0.04), dict(norm="l2", eps=0.6, deepfool=dict(iters=4)),
                                   dict(norm="linf", eps=0.03, deepfool=dict(norm="linf", iters=5)),
                                   dict(norm="linf", eps=0.04, deepfool=dict(clamp="point", iters=4))])
def test_batched_craft_equals_per_image_reference(task, monkeypatch, extra, adaptive, min_width):
    """The batched loop gives the per-image loop's v: checks batched, DeepFool speculative (the CUDA policy
    `adaptive`) or not (the CPU policy); min_width=8 forces many discarded runs."""
    model, x, *_ = task
    monkeypatch.setattr(deepfool_uap._Speculation, "ADAPTIVE", adaptive)
    monkeypatch.setattr(deepfool_uap._Speculation, "MIN_WIDTH", min_width)
    cfg = cfg_(**extra)
    xs = x[:160]
    res = craft_deepfool_uap(model, xs, torch.zeros(160, dtype=torch.long), cfg, K, generator=gen(3))
    v_ref, added_ref = ref_universal(model, xs, cfg, gen(3))
    assert sum(r["steps_added"] for r in res.history) == added_ref > 0
    assert torch.allclose(res.delta, v_ref, atol=1e-9)
    assert [r["images"] for r in res.history] == [160, 160]
    assert res.history[-1]["fooling_rate"] > 0.2


def test_relaxed_batching_with_chunks_of_one_is_the_reference(task):
    """deepfool.batching=relaxed computes a chunk's runs at the chunk's starting v; with one image per chunk that is
    the sequential loop itself."""
    model, x, *_ = task
    cfg = cfg_(deepfool=dict(batching="relaxed", chunk=1))
    xs = x[:160]
    res = craft_deepfool_uap(model, xs, torch.zeros(160, dtype=torch.long), cfg, K, generator=gen(3))
    v_ref, added_ref = ref_universal(model, xs, cfg, gen(3))
    assert sum(r["steps_added"] for r in res.history) == added_ref > 0
    assert torch.allclose(res.delta, v_ref, atol=1e-9)


def test_relaxed_batching_in_chunks_stays_in_budget_and_fools(task):
    model, x, *_ = task
    cfg = cfg_(eps=0.04, deepfool=dict(batching="relaxed", chunk=32))
    res = craft_deepfool_uap(model, x[:160], torch.zeros(160, dtype=torch.long), cfg, K, generator=gen(3))
    assert res.delta.abs().max() <= 0.04 + 1e-9
    assert res.history[-1]["fooling_rate"] > 0.2 and all(r["steps_added"] > 0 for r in res.history[:1])


# ---------------------------------------------------------------- (c) converged-only updates
class Concave(nn.Module):
    """Two classes; the logit gap 1 − 2·exp(−t) is concave in t = 10·(mean(x) − 0.5), so one linearised
    step undershoots the boundary (from t = 0 to t ≈ 0.51 against the root ln 2) and DeepFool needs 3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = 10 * (x.flatten(1).mean(1) - 0.5)
        h = 1 - 2 * torch.exp(-t)
        return torch.stack([torch.zeros_like(h), h], 1)


def test_step_added_only_when_deepfool_converged():
    x = (0.5 + 0.005 * torch.randn(8, 1, 4, 4, generator=gen(0))).double()
    model = Concave()
    one = craft_deepfool_uap(model, x, torch.zeros(8, dtype=torch.long), cfg_(eps=0.2, deepfool=dict(iters=4)), 2,
                             generator=gen())  # accepted only within 2 iterations: DeepFool needs 3 here
    assert torch.count_nonzero(one.delta) == 0 and sum(r["steps_added"] for r in one.history) == 0
    # the iterations after iters - 2 can never give an added step, so they are not run
    assert one.stats["deepfool_mean_iters"] == 2 and one.stats["deepfool_unaccepted_share"] == 1.0
    ten = craft_deepfool_uap(model, x, torch.zeros(8, dtype=torch.long), cfg_(eps=0.2, deepfool=dict(iters=10)), 2,
                             generator=gen())
    assert sum(r["steps_added"] for r in ten.history) > 0 and ten.history[-1]["fooling_rate"] == 1.0


# ---------------------------------------------------------------- (d) L2 projection into the ball
def test_l2_projection_keeps_the_budget_and_does_not_rescale_inside(task):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).double().eval()
    x = 0.5 + 0.02 * torch.randn(1, 1, 8, 8, dtype=torch.float64)
    step = deepfool(model, x).step[0]
    inside = craft_deepfool_uap(model, x, torch.zeros(1, dtype=torch.long),
                                cfg_(norm="l2", eps=2 * float(step.norm()), passes=1), 5, generator=gen())
    assert torch.allclose(inside.delta, step, atol=1e-12)  # inside the ball: v is the step itself, not rescaled
    mlp, xs, *_ = task
    eps = 0.3
    res = craft_deepfool_uap(mlp, xs[:128], torch.zeros(128, dtype=torch.long), cfg_(norm="l2", eps=eps), K,
                             generator=gen())
    assert float(res.delta.norm()) <= eps * (1 + 1e-9) and float(res.delta.norm()) > 0.5 * eps


# ---------------------------------------------------------------- (e) the shared stopping rule
def test_fooling_target_stops_early_and_converges(task):
    model, x, _, xt, yt = task
    model, x, xt = copy.deepcopy(model).float(), x.float(), xt.float()  # the validation metrics run in float32
    cfg = cfg_(eps=0.08, passes=10, fooling_target=0.5)
    res = craft_deepfool_uap(model, x[:256], torch.zeros(256, dtype=torch.long), cfg, K, generator=gen(),
                             val=(xt, yt))
    assert res.converged and res.passes < 10 and len(res.history) == res.passes
    assert res.history[-1]["val_fooling_rate"] >= 0.5
    assert all(r["val_fooling_rate"] < 0.5 for r in res.history[:-1])
    full = craft_deepfool_uap(model, x[:256], torch.zeros(256, dtype=torch.long), cfg_(eps=0.08, passes=3), K,
                              generator=gen())
    assert not full.converged and full.passes == 3


def test_max_steps_and_warm_start(task):
    model, x, *_ = task
    res = craft_deepfool_uap(model, x[:160], torch.zeros(160, dtype=torch.long), cfg_(batch_size=32, passes=5), K,
                             generator=gen(), max_steps=7)
    assert res.images_processed == 7 * 32 and [r["images"] for r in res.history] == [160, 64]
    init = torch.full(SHAPE, 0.5, dtype=torch.float64)
    warm = craft_deepfool_uap(model, x[:8], torch.zeros(8, dtype=torch.long), cfg_(passes=1), K, generator=gen(),
                              init=init, max_steps=0)
    assert torch.allclose(warm.delta, torch.full(SHAPE, 0.04, dtype=torch.float64))  # projected warm start, no image


# ---------------------------------------------------------------- (f) attack=uap_linf
def test_uap_linf_config_composes_and_runs(task, validated):
    model, x, *_ = task
    linf = validated(["attack=uap_linf"]).attack
    l2 = validated(["attack=uap"]).attack
    assert (linf.name, linf.deepfool.norm, l2.deepfool.norm) == ("uap", "linf", "l2")
    assert dataclasses.replace(linf, deepfool=dataclasses.replace(linf.deepfool, norm="l2")) == l2
    runs = {}
    for cfg in (linf, l2):
        cfg = dataclasses.replace(cfg, eps=0.04, passes=1, batch_size=64)
        runs[cfg.deepfool.norm] = craft_deepfool_uap(copy.deepcopy(model), x[:96], torch.zeros(96, dtype=torch.long),
                                                     cfg, K, generator=gen())
    assert runs["linf"].delta.abs().max() <= 0.04 and runs["linf"].history[0]["steps_added"] > 0
    assert not torch.allclose(runs["linf"].delta, runs["l2"].delta)
