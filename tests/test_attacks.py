"""Attacks: threat models, the crafting engine, SGD-UAP, CB-UAP, class-wise UAP and DeepFool-UAP.

The toy task and its tiny MLP (trained once per module, about a second) come from tests/toy.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from cbuap_runner.attacks import ATTACKS, L2Threat, LinfThreat, apply_delta, attack_config, craft
from cbuap_runner.attacks.ascent import AscentStep
from cbuap_runner.attacks.cb_uap import BalanceConfig, BalanceSchedule, CBObjective, balanced_targets
from cbuap_runner.attacks.engine import Budget, PassLoop, PassStats, RunOptions, batch_objective
from cbuap_runner.attacks.objectives import ClippedLoss
from cbuap_runner.data import DataBundle, Split
from cbuap_runner.errors import UserError
from cbuap_runner.metrics import evaluate_perturbation, fooling_rates
from cbuap_runner.perturbations import select_start
from cbuap_runner.schema import AttackConfig
from toy import SHAPE, K, train_toy_model


@pytest.fixture(scope="module")
def task():
    return train_toy_model()


BALANCE_KEYS = {f.name for f in dataclasses.fields(BalanceConfig)}


def cfg_(name: str = "sgd_uap", **kw) -> AttackConfig:
    """An attack config; keys of attack.balance go into that section (cb_uap only), whose weights start at zero
    here (each test switches on the terms it needs)."""
    balance = {k: kw.pop(k) for k in list(kw) if k in BALANCE_KEYS}
    base = {"eps": 0.04, "passes": 5, "batch_size": 64, **kw}
    if name == "cb_uap":
        base["balance"] = BalanceConfig(**{"lambda_div": 0.0, "lambda_pen": 0.0, "lambda_pull": 0.0, **balance})
    elif balance:
        raise ValueError(f"attack={name} has no balance section: {balance}")
    return attack_config(name, **base)


def cb_(groups: int = 1, **kw) -> CBObjective:
    """CB-UAP's objective under cfg_(name="cb_uap", **kw)."""
    return CBObjective(cfg_(name="cb_uap", **kw), K, groups, torch.device("cpu"))


def clipped_(cfg: AttackConfig) -> ClippedLoss:
    return ClippedLoss(cfg.loss, cfg.beta, cfg.kappa, getattr(cfg, "target", None))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- threat models
def test_linf_projection_and_step():
    t = LinfThreat(0.1)
    d = torch.randn(3, 4, 4)
    t.project_(d)
    assert d.abs().max() <= 0.1
    d0 = torch.zeros(3, 4, 4)
    t.step_(d0, torch.randn(3, 4, 4), 0.02)
    assert torch.allclose(d0.abs(), torch.full_like(d0, 0.02))


def test_l2_projection_goes_into_the_ball_per_row():
    t = L2Threat(1.0)
    inside = torch.randn(3, 4, 4)
    inside *= 0.5 / inside.norm()
    before = inside.clone()
    t.project_(inside)
    assert torch.equal(inside, before)  # already inside: unchanged, not pushed onto the sphere
    big = torch.randn(3, 4, 4) * 10
    t.project_(big)
    assert big.norm() == pytest.approx(1.0, rel=1e-5)
    batch = torch.stack([before, torch.randn(3, 4, 4) * 10])
    t.project_(batch)
    assert torch.equal(batch[0], before)
    assert batch[1].norm() == pytest.approx(1.0, rel=1e-5)


def test_l2_step_has_length_alpha_per_row():
    t = L2Threat(1.0)
    d = torch.zeros(2, 3, 4, 4)
    g = torch.randn(2, 3, 4, 4) * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1)
    t.step_(d, g, 0.3)
    assert torch.allclose(d.flatten(1).norm(dim=1), torch.tensor([0.3, 0.3]), atol=1e-6)


@pytest.mark.parametrize("threat", [LinfThreat(0.1), L2Threat(0.5)])
def test_random_init_inside_ball_and_rows_differ(threat):
    d = threat.random_init((3, 1, 8, 8), generator=gen())
    assert (threat.norms(d) <= threat.eps + 1e-6).all()
    assert not torch.equal(d[0], d[1])
    assert torch.equal(d, threat.random_init((3, 1, 8, 8), generator=gen()))


# ---------------------------------------------------------------- engine contracts
def _mean_loss(model, x, y, delta, cfg) -> float:
    with torch.no_grad():
        return float(clipped_(cfg).per_sample(model(apply_delta(x, delta)).unsqueeze(0), y).mean())


def test_delta_moves_objective_rises_input_untouched(task):
    model, x, y, *_ = task
    x0, y0 = x.clone(), y.clone()
    params = [p.clone() for p in model.parameters()]
    model.train()
    cfg = cfg_()
    res = craft(model, x, y, cfg, K, generator=gen())
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored
    model.eval()
    assert res.delta.shape == SHAPE and res.delta.abs().max() > 0
    assert _mean_loss(model, x, y, res.delta, cfg) > _mean_loss(model, x, y, torch.zeros(SHAPE), cfg) + 0.5
    objs = [h["objective"] for h in res.history]
    assert objs[-1] > objs[0]
    assert res.passes == len(res.history) == 5 and res.images_processed == 5 * 512
    assert {"pass", "objective", "fooling_rate", "step_size"} <= res.history[0].keys()
    assert res.history[1]["step_size"] == pytest.approx(res.history[0]["step_size"] * cfg.step_decay)


@pytest.mark.parametrize("norm,eps", [("linf", 0.04), ("l2", 0.8)])
def test_budget_and_pixel_range(task, norm, eps):
    model, x, y, *_ = task
    cfg = cfg_(norm=norm, eps=eps, num_starts=2, init="uniform")
    res = craft(model, x, y, cfg, K, generator=gen())
    d = res.delta
    norms = d.flatten(1).abs().amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-5).all()


class _InputRange(nn.Module):
    """Wraps a model and records the smallest and largest input value it was ever given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.lo, self.hi = model, float("inf"), float("-inf")

    def forward(self, x):
        self.lo, self.hi = min(self.lo, float(x.detach().min())), max(self.hi, float(x.detach().max()))
        return self.model(x)


@pytest.mark.parametrize("name", ["sgd_uap", "cb_uap", "cw_uap", "uap"])
def test_model_only_sees_images_in_pixel_range(task, name):
    """Crafting on images at the edge of [0, 1] with a large budget: every input the model gets is clamped."""
    model, x, y, *_ = task
    spy = _InputRange(model)
    edge = (x > 0.5).float()  # pixels at exactly 0 or 1, so any unclamped x + δ leaves the range
    balance = {"lambda_div": 0.5} if name == "cb_uap" else {}
    craft(spy, edge, y, cfg_(name=name, eps=0.3, passes=1, **balance), K, generator=gen())
    assert spy.lo >= 0 and spy.hi <= 1


def test_adam_optimizer_respects_budget(task):
    model, x, y, *_ = task
    res = craft(model, x, y, cfg_(optimizer="adam", adam_lr=0.01), K, generator=gen())
    assert res.delta.abs().max() <= 0.04 + 1e-6 and res.delta.abs().max() > 0
    assert res.history[-1]["objective"] > res.history[0]["objective"]


def test_gradient_is_mean_reduced():
    """One image or eight copies of it: the same objective and the same gradient (not 8x)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, K))
    xb = torch.rand(1, 1, 4, 4)
    yb = torch.tensor([1])
    obj = clipped_(cfg_(eps=0.1))
    grads = []
    for n in (1, 8):
        delta = torch.zeros(1, 1, 4, 4, requires_grad=True)
        J, _, _ = batch_objective(model, xb.expand(n, -1, -1, -1), yb.expand(n), delta, obj,
                                  clean=torch.zeros(n, dtype=torch.long))
        grads.append(torch.autograd.grad(J.sum(), delta)[0])
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_larger_eps_fools_at_least_as_much(task):
    model, x, y, xt, yt = task
    rates = [evaluate_perturbation(model, xt, yt, craft(model, x, y, cfg_(eps=e), K, generator=gen()).delta, K)
             ["fooling_rate"] for e in (0.01, 0.03, 0.06)]
    assert rates[0] <= rates[1] <= rates[2] and rates[2] > 0.5


def test_sgd_uap_beats_random_noise(task):
    model, x, y, xt, yt = task
    res = craft(model, x, y, cfg_(), K, generator=gen())
    noise = (torch.randint(0, 2, SHAPE, generator=gen(5)) * 2 - 1).float() * 0.04
    fr_uap = evaluate_perturbation(model, xt, yt, res.delta, K)["fooling_rate"]
    fr_noise = evaluate_perturbation(model, xt, yt, noise, K)["fooling_rate"]
    assert fr_uap > 0.5 and fr_uap > fr_noise + 0.4


def test_cb_uap_with_zero_weights_is_sgd_uap_bit_for_bit(task):
    model, x, y, *_ = task
    for shared, balance in (({}, {}), ({"init": "uniform", "num_starts": 2}, {"penalty": "hinge", "ema": True}),
                            ({}, {"lambda_ramp": 3, "fooling_guard": 0.05, "start": 1})):
        a = craft(model, x, y, cfg_(**shared), K, generator=gen(7))
        b = craft(model, x, y, cfg_(name="cb_uap", **shared, **balance), K, generator=gen(7))
        assert torch.equal(a.delta, b.delta)
    # balance terms that never switch on (balance_start >= passes) also leave SGD-UAP unchanged
    c = craft(model, x, y, cfg_(name="cb_uap", lambda_div=1.0, start=5), K, generator=gen(7))
    assert torch.equal(craft(model, x, y, cfg_(), K, generator=gen(7)).delta, c.delta)


def test_same_seed_same_delta(task):
    model, x, y, *_ = task
    cfg = cfg_(init="uniform")
    assert torch.equal(craft(model, x, y, cfg, K, generator=gen(3)).delta,
                       craft(model, x, y, cfg, K, generator=gen(3)).delta)


def test_targeted_mode_pushes_to_target(task):
    model, x, y, xt, yt = task
    target = 2
    for loss in ("ce", "cw"):
        res = craft(model, x, y, cfg_(name="sgd_uap", target=target, loss=loss, eps=0.06), K, generator=gen())
        m = evaluate_perturbation(model, xt, yt, res.delta, K)
        assert m["label_hist"][target] > 0.9, loss
        assert res.history[-1]["target_rate"] > 0.9


def test_num_starts_gives_distinct_stack(task):
    model, x, y, xt, yt = task
    res = craft(model, x, y, cfg_(num_starts=3, init="uniform"), K, generator=gen())
    assert res.delta.shape == (3, *SHAPE)
    assert not torch.equal(res.delta[0], res.delta[1])
    assert len(res.history[0]["fooling_rates"]) == 3
    rates = fooling_rates(model, xt, res.delta)
    assert rates == [evaluate_perturbation(model, xt, yt, d, K)["fooling_rate"] for d in res.delta]
    with pytest.raises(ValueError, match="stack"):
        evaluate_perturbation(model, xt, yt, res.delta, K)


def test_several_starts_are_chosen_on_the_validation_split_only(task):
    """select_start reads the validation images and nothing else (the test split is absent here)."""
    model, x, y, xt, yt = task
    starts = torch.stack([torch.zeros(SHAPE), craft(model, x, y, cfg_(), K, generator=gen()).delta])
    data = DataBundle(train=None, val=Split(xt, yt), test=None, num_classes=K, input_shape=SHAPE, class_names=[])
    best, rates = select_start(model, data, starts, 100)
    assert best == 1 and rates[0] == 0.0 and rates[1] > 0.5


def test_warm_start_and_max_steps(task):
    model, x, y, *_ = task
    cfg = cfg_(passes=1)
    first = craft(model, x, y, cfg, K, generator=gen())
    res = craft(model, x, y, cfg, K, generator=gen(), init=first.delta, max_steps=12)
    assert res.images_processed == 12 * 64  # 1.5 passes: max_steps overrides passes
    assert res.passes == 2 and not res.converged
    zero = craft(model, x, y, cfg, K, generator=gen(), max_steps=1)
    warm = craft(model, x, y, dataclasses.replace(cfg, step_size=1e-9), K, generator=gen(), init=first.delta,
                 max_steps=1)
    assert torch.allclose(warm.delta, first.delta, atol=1e-6) and not torch.allclose(zero.delta, first.delta)


def test_early_stop_on_validation_sets_converged_and_returns_the_best(task):
    model, x, y, xt, yt = task
    res = craft(model, x, y, cfg_(passes=50, tol=1e-3, patience=2), K, generator=gen(), val=(xt, yt))
    assert res.converged and res.passes < 50
    rates = [h["val_fooling_rate"] for h in res.history]
    assert evaluate_perturbation(model, xt, yt, res.delta, K)["fooling_rate"] == pytest.approx(max(rates))
    assert res.history[-1]["val_fooling_rate"] <= max(rates[:-2]) + 1e-3  # the last two passes stalled


@pytest.mark.parametrize("name", ["sgd_uap", "cw_uap", "uap"])
def test_fooling_target_on_validation_stops_every_attack(task, name):
    model, x, y, xt, yt = task
    res = craft(model, x, y, cfg_(name=name, eps=0.08, passes=10, fooling_target=0.3), K, generator=gen(),
                val=(xt, yt))
    assert res.converged and res.passes < 10 and res.history[-1]["val_fooling_rate"] >= 0.3
    assert all(h["val_fooling_rate"] < 0.3 for h in res.history[:-1])


def test_stopping_rules_need_validation_images(task):
    model, x, y, *_ = task
    with pytest.raises(ValueError, match="validation"):
        craft(model, x, y, cfg_(patience=2), K, generator=gen())
    plain = craft(model, x, y, cfg_(passes=3), K, generator=gen())
    assert plain.passes == 3 and not plain.converged and "val_fooling_rate" not in plain.history[0]


def test_cw_uap_gives_one_delta_per_class(task):
    model, x, y, xt, yt = task
    res = craft(model, x, y, cfg_(name="cw_uap"), K, generator=gen())
    assert res.delta.shape == (K, *SHAPE) and res.delta.abs().max() <= 0.04 + 1e-6
    assert not torch.equal(res.delta[0], res.delta[1])
    adv = apply_delta(xt, res.delta, yt)
    assert torch.equal(adv[0], (xt[0] + res.delta[yt[0]]).clamp(0, 1))
    m = evaluate_perturbation(model, xt, yt, res.delta, K, class_wise=True)
    assert m["fooling_rate"] > 0.8


@pytest.mark.parametrize("extra", [
    dict(lambda_div=1.0, lambda_conf=0.5),
    dict(lambda_div=1.0, ema=True, ema_decay=0.5, calibration="temperature", temperature=2.0),
    dict(lambda_pen=10.0, penalty="hinge", penalty_weights="histogram", calibration="none"),
    dict(lambda_pen=10.0, penalty="frequency", class_reweight=True, start=1),
    dict(lambda_div=1.0, lambda_pen=1.0, penalty="hinge", start=1, lambda_ramp=2, fooling_guard=0.05,
         num_starts=2, init="uniform"),
    dict(lambda_div=0.0, lambda_pen=0.0, lambda_pull=2.0),
    dict(lambda_div=0.0, lambda_pen=0.0, dro_eta=0.5),
])
def test_cb_uap_variants_run_and_stay_in_budget(task, extra):
    model, x, y, *_ = task
    res = craft(model, x, y, cfg_(name="cb_uap", passes=3, **extra), K, generator=gen())
    assert torch.isfinite(res.delta).all() and res.delta.abs().max() <= 0.04 + 1e-6
    assert all(torch.isfinite(torch.tensor(h["objective"])) for h in res.history)
    assert not torch.equal(res.delta, craft(model, x, y, cfg_(passes=3), K, generator=gen()).delta)


def test_balance_terms_pull_mass_off_the_dominant_label():
    """Every sample fooled into class 0: the balance terms lower J when class-0 logits rise, and the
    CB-UAP gradient on the class-0 logits is smaller than SGD-UAP's (a reliable, constructed check; on the
    near-linear toy model a universal shift sends all fooled samples to one argmax whatever the objective)."""
    torch.manual_seed(0)
    y = torch.tensor([1, 2, 3, 1, 2, 3])
    logits = torch.randn(1, 6, K) * 0.1
    logits[0, :, 0] += 3.0
    grads = {}
    for name, kw in (("sgd", {}), ("cb", dict(lambda_div=1.0, lambda_pen=10.0, penalty="hinge"))):
        z = logits.clone().requires_grad_(True)
        J, parts = cb_(**kw).terms(z, y) if name == "cb" else clipped_(cfg_())(z, y)
        grads[name] = torch.autograd.grad(J.sum(), z)[0]
        if name == "cb":
            assert parts["r_pen"] > 0
    assert (grads["cb"][0, :, 0] < grads["sgd"][0, :, 0]).all()
    assert (grads["cb"][0, :, 0] < 0).all()  # J is pushed to move mass off the dominant class


def test_balanced_targets_are_wrong_classes_shared_equally():
    """Every image prefers class 1; the equipartition plan still spreads the targets over the wrong classes."""
    torch.manual_seed(0)
    B = 60
    y = torch.arange(B) % K
    log_p = torch.log_softmax(torch.randn(2, B, K) * 0.1 + torch.eye(K)[1] * 4.0, -1)
    t = balanced_targets(log_p, y)
    assert t.shape == (2, B) and not (t == y).any()
    counts = torch.stack([torch.bincount(row, minlength=K) for row in t])
    assert counts.max() <= 2 * B // K  # near 1/K each, though argmax would send all but class 1's images to 1
    assert (log_p.argmax(-1) == 1).all()


def test_pull_term_acts_on_fooled_images_only():
    y = torch.tensor([0, 1, 2, 3])
    z = torch.zeros(1, 4, K)
    z[0, 0, 1] = z[0, 1, 1] = 5.0  # image 0 fooled (to 1), image 1 not (predicted as its label), 2 and 3 fooled
    z[0, 2, 0] = z[0, 3, 0] = 5.0
    z.requires_grad_(True)
    obj = cb_(lambda_div=0.0, lambda_pen=0.0, lambda_pull=1.0)
    J, parts = obj.terms(z, y)
    assert parts["l_pull"] > 0
    (grad,) = torch.autograd.grad(J.sum(), z)
    plain = torch.autograd.grad(obj.clipped.per_sample(z, y).mean(-1).sum(), z)[0]
    assert torch.equal(grad[0, 1], plain[0, 1])  # the unfooled image feels the attack loss alone
    assert not torch.equal(grad[0, 0], plain[0, 0])


def test_dro_weights_follow_the_least_fooled_class():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    z = torch.zeros(1, 6, K)
    z[0, :2, 0] = 8.0  # class 0 keeps its label: the lowest attack loss
    z[0, 2:, 0] = 8.0  # classes 1 and 2 are fooled into 0: high loss
    obj = cb_(lambda_div=0.0, lambda_pen=0.0, dro_eta=0.1)
    for _ in range(3):
        obj.terms(z, y)
    w = obj.K * torch.softmax(obj.dro_logits, 0)
    assert w[0] > w[3] > w[1] and torch.isclose(w[1], w[2])  # absent classes keep their weight
    assert torch.isclose(w.sum(), torch.tensor(float(K)))


def test_sgd_uap_has_no_balance_section():
    with pytest.raises(UserError, match=r"attack.balance: attack=sgd_uap has no such key; attack=cb_uap has it"):
        attack_config("sgd_uap", balance=BalanceConfig())


def test_balance_scale_multiplies_only_the_balance_terms():
    torch.manual_seed(0)
    y = torch.tensor([1, 2, 3, 0])
    z = torch.randn(2, 4, K)
    obj = cb_(2, lambda_div=1.0, lambda_pen=5.0, penalty="hinge")
    j_full, parts = obj.terms(z, y)
    j_none, _ = obj.terms(z, y, scale=torch.zeros(2))
    j_half, _ = obj.terms(z, y, scale=torch.tensor([0.5, 1.0]))
    assert torch.allclose(j_none, obj.clipped.per_sample(z, y).mean(-1))
    assert torch.allclose(j_half[1], j_full[1])
    assert torch.allclose(j_half[0], 0.5 * (j_full[0] + j_none[0]))


def test_balance_schedule_ramp_and_fooling_guard():
    def balance(**kw) -> BalanceConfig:
        return cfg_(name="cb_uap", **kw).balance

    sched = BalanceSchedule(balance(lambda_ramp=4, start=2), 1, torch.device("cpu"))
    assert [float(sched.factor(p)) for p in (2, 3, 5, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert BalanceSchedule(balance(), 1, torch.device("cpu")).factor(0) is None  # unscheduled: objective unchanged
    g = BalanceSchedule(balance(fooling_guard=0.1), 2, torch.device("cpu"))
    assert torch.equal(g.factor(0), torch.ones(2))  # no fooling rate seen yet
    g.observe(torch.tensor([0.8, 0.8]))  # first batch sets the EMA and the best
    assert torch.allclose(g.factor(0), torch.ones(2))
    for _ in range(50):  # start 0 keeps its fooling rate, start 1 loses 0.2: full weight vs none
        g.observe(torch.tensor([0.8, 0.6]))
    f = g.factor(0)
    assert torch.allclose(f[0], torch.tensor(1.0)) and float(f[1]) == 0.0
    wide = BalanceSchedule(balance(fooling_guard=0.3), 1, torch.device("cpu"))
    wide.observe(torch.tensor([0.8]))
    for _ in range(100):  # 0.2 lost of a 0.3 margin: a third of the balance weight is left
        wide.observe(torch.tensor([0.6]))
    assert float(wide.factor(0)[0]) == pytest.approx(1 / 3, abs=1e-4)


def test_fooling_guard_keeps_crafting_fooling_rate(task):
    """With a large diversity weight the guard keeps the crafting fooling rate near the plain SGD-UAP one."""
    model, x, y, *_ = task
    plain = craft(model, x, y, cfg_(passes=6), K, generator=gen())
    strong = dict(name="cb_uap", passes=6, lambda_div=20.0, lambda_pen=20.0, penalty="hinge", start=2)
    free = craft(model, x, y, cfg_(**strong), K, generator=gen())
    guarded = craft(model, x, y, cfg_(**strong, fooling_guard=0.05), K, generator=gen())
    fr = {k: r.history[-1]["fooling_rate"] for k, r in (("plain", plain), ("free", free), ("guard", guarded))}
    assert fr["guard"] >= fr["free"] and fr["guard"] >= fr["plain"] - 0.1, fr
    assert min(h["balance_scale"] for h in guarded.history if "balance_scale" in h) < 1  # the guard acted


def test_balance_stop_switches_the_terms_off_again(task):
    model, x, y, *_ = task
    res = craft(model, x, y, cfg_(name="cb_uap", passes=4, lambda_div=1.0, start=1, stop=3), K,
                generator=gen())
    assert [h["balance_on"] for h in res.history] == [False, True, True, False]
    assert "l_div" in res.history[1] and "l_div" not in res.history[3]


def test_schedule_settings_are_validated():
    for bad in (dict(start=2, stop=2), dict(fooling_guard=0.0), dict(fooling_guard=1.5),
                dict(lambda_ramp=-1), dict(num_starts=2, init="zero"), dict(patience=0), dict(fooling_target=1.5)):
        with pytest.raises(UserError):
            cfg_(name="cb_uap", **bad).check("attack", K)
    cfg_(name="cb_uap", start=1, stop=3, fooling_guard=0.05, lambda_ramp=2).check("attack", K)


def test_registry_and_unknown_attack(task):
    model, x, y, *_ = task
    assert {"sgd_uap", "cb_uap", "uap", "cw_uap"} <= set(ATTACKS)
    with pytest.raises(KeyError, match="attack.name"):
        craft(model, x, y, dataclasses.replace(cfg_(), name="nope"), K)


def test_apply_delta_needs_labels_for_a_stack():
    x = torch.rand(2, *SHAPE)
    with pytest.raises(ValueError):
        apply_delta(x, torch.zeros(3, *SHAPE))
    assert torch.equal(apply_delta(x, torch.zeros(1, *SHAPE)), x)


# ---------------------------------------------------------------- engine parts: the ascent step, pass statistics, pass loop

def test_stepper_sign_step_decays_and_projects():
    delta = torch.zeros(2, *SHAPE, requires_grad=True)
    grad = torch.randn(2, *SHAPE, generator=gen())
    stepper = AscentStep(delta, LinfThreat(0.1), cfg_(eps=0.1, step_size=0.04, step_decay=0.5))
    stepper.step(grad)
    assert torch.equal(delta.detach(), 0.04 * grad.sign()) and delta.grad is None
    stepper.end_pass()
    assert stepper.current_step_size == 0.02
    for _ in range(10):
        stepper.step(grad)
    assert torch.equal(delta.detach(), 0.1 * grad.sign())  # 0.24 along sign(g), clamped onto the box
    assert AscentStep(torch.zeros(1), LinfThreat(0.1), cfg_(eps=0.1)).current_step_size == 0.1 / 4


def test_stepper_l2_projects_each_row_into_the_ball():
    delta = torch.zeros(2, *SHAPE, requires_grad=True)
    stepper = AscentStep(delta, L2Threat(1.0), cfg_(norm="l2", eps=1.0, step_size=0.5))
    grad = torch.randn(2, *SHAPE, generator=gen())
    stepper.step(grad)
    assert torch.allclose(delta.detach().flatten(1).norm(dim=1), torch.tensor([0.5, 0.5]))
    for _ in range(3):
        stepper.step(grad)
    assert torch.allclose(delta.detach().flatten(1).norm(dim=1), torch.tensor([1.0, 1.0]))


def test_stepper_adam_ascends_and_decays_its_learning_rate():
    delta = torch.zeros(1, *SHAPE, requires_grad=True)
    stepper = AscentStep(delta, LinfThreat(0.1), cfg_(eps=0.1, optimizer="adam", adam_lr=0.01, step_decay=0.5))
    grad = torch.randn(1, *SHAPE, generator=gen())
    stepper.step(grad)
    assert torch.equal(delta.detach().sign(), grad.sign()) and delta.grad is None  # maximises
    assert torch.allclose(delta.detach().abs(), torch.full_like(delta, 0.01), rtol=1e-3)
    assert stepper.current_step_size == 0.01
    stepper.end_pass()
    assert stepper.current_step_size == 0.005


def test_pass_stats_record_is_the_hand_computation(monkeypatch):
    reduced = []
    monkeypatch.setattr("cbuap_runner.attacks.engine.all_reduce_mean_", lambda t: reduced.append(t) or t)
    stats = PassStats(2, torch.device("cpu"), target=1)
    stats.add(torch.tensor([1.0, 3.0]), {"l_atk": torch.tensor(2.0)}, torch.tensor([[0, 1, 1], [1, 1, 2]]),
              torch.tensor([0, 1, 2]))
    stats.add(torch.tensor([5.0, 7.0]), {"l_atk": torch.tensor(4.0)}, torch.tensor([[1], [2]]), torch.tensor([1]))
    record = stats.record(3, 0.5, balance_on=True)
    # J: batch means 2 and 6; fooled (pred ≠ clean) 1 + 0 and 1 + 1 of 4 images; target hits 2 + 1 and 2 + 0
    assert record == {"pass": 3, "objective": 4.0, "fooling_rate": 0.5, "step_size": 0.5, "images": 4,
                      "balance_on": True, "l_atk": 3.0, "fooling_rates": [0.25, 0.5], "target_rate": 0.75}
    assert list(record)[:6] == ["pass", "objective", "fooling_rate", "step_size", "images", "balance_on"]
    assert len(reduced) == 1  # one reduction (and one host read) per pass
    single = PassStats(1, torch.device("cpu"))
    single.add(torch.tensor([1.0]), {}, torch.tensor([[0, 3]]), torch.tensor([0, 1]))
    assert single.record(1, None, balance_on=False) == {"pass": 1, "objective": 1.0, "fooling_rate": 0.5, "step_size": None,
                                             "images": 2, "balance_on": False}


def test_pass_loop_shows_its_bar_when_asked_even_off_a_terminal(task):
    """progress=on forces the crafting bar (the task passes progress_enabled(), which reads auto/on/off)."""
    model, *_ = task
    for asked in (True, False):
        with PassLoop(model, Budget(1, 64), None, 10, RunOptions("t", gen(), progress=asked), torch.device("cpu")) as loop:
            assert loop.bar.disable is not asked


def test_pass_loop_draws_orders_keeps_history_and_stops(task):
    model, _, _, xt, yt = task
    cpu = torch.device("cpu")
    with PassLoop(model, Budget(3, 64), None, 10, RunOptions("t", gen(4)), cpu) as loop:
        orders = []
        for order in loop:
            orders.append(order)
            loop.end_pass({"pass": loop.passes + 1}, torch.zeros(SHAPE), dict)
    ref = gen(4)
    assert len(orders) == 3 and all(torch.equal(o, torch.randperm(10, generator=ref)) for o in orders)
    assert loop.passes == 3 and loop.history == [{"pass": 1}, {"pass": 2}, {"pass": 3}] and not loop.monitor.stop
    with PassLoop(model, Budget(3, 64, max_steps=100), None, 10, RunOptions("t", gen()), cpu) as loop:
        for _ in loop:
            loop.end_pass({}, torch.zeros(SHAPE), dict)
            loop.finish()
    assert loop.passes == 1
    with PassLoop(model, Budget(3, 64, max_steps=0), None, 10, RunOptions("t", gen()), cpu) as loop:
        assert list(loop) == [] and loop.passes == 0
    with PassLoop(model, Budget(3, 64, fooling_target=0.0), (xt, yt), 10, RunOptions("t", gen()), cpu) as loop:
        for _ in loop:
            loop.end_pass({}, torch.zeros(SHAPE), dict)
    assert loop.passes == 1 and loop.monitor.converged and loop.history == [{"val_fooling_rate": 0.0}]
