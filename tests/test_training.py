"""Training: the natural loop end to end, every defence's adversary (its δ step against the frozen model, its
paper's update rule, the one σ-mixed loss), the model cache and the pipeline task."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbuap_runner.attacks import ATTACKS, apply_delta
from cbuap_runner.data import load_data
from cbuap_runner.models import build_model
from cbuap_runner.record import RunRecord
from cbuap_runner.training import DEFENCES, make_adversary
from cbuap_runner.training.loop import TrainingRun, fit
from cbuap_runner.training.pgd_at import pgd
from cbuap_runner.training.uat import UAT

ADVERSARIAL = [d for d in DEFENCES if d != "natural"]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_train_end_to_end_on_synthetic(cli):
    proc, run_dir = cli(["task=train", "dataset=synthetic", "training.epochs=2", "training.batch_size=32"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "completed" and summary["task"] == "train"
    assert summary["metrics"]["clean_acc"] > 0.5  # 4 learnable classes: chance is 0.25
    assert [r["epoch"] for r in _records(run_dir)] == [1, 2]
    blob = torch.load(run_dir / "model.pt", weights_only=True)
    assert blob["input_shape"] == [1, 16, 16] and blob["num_classes"] == 4
    assert (run_dir / ".hydra" / "config.yaml").is_file()


# small settings of the sections a defence reads (a defence refuses keys it does not read)
SMALL = {"cb_uat": ["training.pool.refresh_unit=epoch", "training.pool.refresh_every=1",
               "training.pool.refresh_steps=2", "training.adversary.batch_size=32"],
         "pgd_at": ["training.pgd.steps=2"], "sat": ["training.pgd.steps=2"]}


def _setup(validated, defence, tmp_path, extra=(), seed=0):
    cfg = validated(["dataset=synthetic", f"training={defence}", "training.batch_size=32", "training.epochs=1",
                     *SMALL.get(defence, []), *extra])
    data = load_data(cfg.dataset, str(tmp_path), cfg.seed, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model("small_cnn", data.num_classes, data.input_shape, [0.5], [0.25])
    adversary = make_adversary(defence, cfg.training, data.num_classes, data.input_shape, torch.device("cpu"),
                               seed=seed)
    return cfg, data, model, adversary


def _batch(data, start=0, n=32):
    return data.train.x[start:start + n].float().div(255), data.train.y[start:start + n]


def _start_epoch(adversary, model, data):
    adversary.on_epoch_start(model, 0, data.train, torch.Generator().manual_seed(0))


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def quiet_run(run_dir, seed: int) -> TrainingRun:
    """A training run in run_dir on the CPU that logs nowhere."""
    return TrainingRun(RunRecord(run_dir), seed, torch.device("cpu"), lambda row: None, {})


@pytest.mark.parametrize("defence", list(DEFENCES))
def test_every_defence_trains_and_keeps_its_perturbation_in_budget(defence, validated, tmp_path):
    cfg, data, model, adversary = _setup(validated, defence, tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    result = fit(model, adversary, data, cfg.dataset, cfg.training, quiet_run(tmp_path, cfg.seed))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    loss = result["history"][0]["train_loss"]
    assert math.isfinite(loss) and 0 < loss < 10, loss
    for key, value in adversary.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert value.abs().max() <= cfg.training.eps + 1e-6, key
            assert value.abs().max() > 0, f"{defence}: {key} never moved"


@pytest.mark.parametrize("defence", ["uat", "fast_uat", "cw_uat", "cb_uat"])
def test_l2_threat_keeps_each_perturbation_in_the_l2_ball(defence, validated, tmp_path):
    cfg, data, model, adversary = _setup(validated, defence, tmp_path, ["training.adversary.norm=l2",
                                                                         "training.eps=0.5"])
    fit(model, adversary, data, cfg.dataset, cfg.training, quiet_run(tmp_path, cfg.seed))
    delta = adversary.pool if defence == "cb_uat" else adversary.delta
    norms = delta.flatten(1).norm(dim=1) if delta.dim() == 4 else delta.norm().view(1)
    assert norms.max() <= 0.5 + 1e-5 and norms.max() > 0.1, norms
    assert delta.abs().max() < 0.5  # an L-inf step of 0.5 per pixel would sit on the box's corners


def test_pgd_at_honours_the_l2_threat(validated, tmp_path):
    cfg, data, model, adversary = _setup(validated, "pgd_at", tmp_path, ["training.adversary.norm=l2",
                                                                         "training.eps=0.5"])
    x, y = _batch(data)
    x = x * 0.5 + 0.25  # away from the [0,1] box, so clamping does not shrink δ
    x_adv = pgd(model, x, y, adversary.threat, adversary.step_size, 3)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-5 and norms.min() > 0.05


# ---------------------------------------------------------------- the δ step sees the model as the attacks do


class _ModeLog:
    """Records model.training of every BatchNorm call."""

    def __init__(self, model):
        self.modes = []
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_pre_hook(lambda mod, args: self.modes.append(mod.training))


def _delta_step(defence, adversary, model, data):
    x, y = _batch(data)
    if defence == "cb_uat":
        _start_epoch(adversary, model, data)  # the first refresh
        adversary.refresh(model)
    elif defence in ("pgd_at", "sat"):
        pgd(model, x, y, adversary.threat, adversary.step_size, 2, adversary.group_size)
    else:
        adversary.ascend(model, x, y)


@pytest.mark.parametrize("defence", ["uat", "cw_uat", "cb_uat", "pgd_at", "sat"])
def test_delta_step_runs_in_eval_mode_and_leaves_batchnorm_statistics_untouched(defence, validated, tmp_path):
    _, data, model, adversary = _setup(validated, defence, tmp_path)
    model.train()
    model(_batch(data, 64)[0])  # running statistics away from their initial values
    stats = _bn_state(model)
    log = _ModeLog(model)
    _delta_step(defence, adversary, model, data)
    assert log.modes and not any(log.modes), "a δ step ran the model in train mode"
    after = _bn_state(model)
    assert all(torch.equal(stats[k], after[k]) for k in stats)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_uat_delta_step_inside_the_loss_uses_eval_mode(validated, tmp_path):
    _, data, model, adversary = _setup(validated, "uat", tmp_path)
    model.train()
    adversary.loss(model, *_batch(data, 0), 0)
    log = _ModeLog(model)
    adversary.loss(model, *_batch(data, 32), 1)  # the δ step of batch 0, then the training forward of batch 1
    assert log.modes[0] is False and log.modes[-1] is True


def test_train_mode_delta_step_is_the_measured_alternative(validated, tmp_path):
    """training.delta_model_mode=train (uat, cw_uat only): batch statistics, running statistics updated."""
    from cbuap_runner.errors import describe

    _, data, model, adversary = _setup(validated, "uat", tmp_path, ["training.delta_model_mode=train"])
    model.train()
    stats = _bn_state(model)
    log = _ModeLog(model)
    adversary.ascend(model, *_batch(data))
    assert log.modes and all(log.modes)
    assert any(not torch.equal(stats[k], v) for k, v in _bn_state(model).items())
    with pytest.raises(Exception) as refused:
        validated(["dataset=synthetic", "training=pgd_at", "training.delta_model_mode=train"])
    assert describe(refused.value).startswith("training.delta_model_mode: training=pgd_at has no such key")


# ---------------------------------------------------------------- UAT and FastUAT follow Shafahi et al. 2020


def _tiny_uat(validated, defence="uat", bias=0.0):
    """A linear 2-class model on 1x4x4 inputs with ∇x CE(·, 0) = p_1 (W_1 − W_0): sign +1 on the first half."""
    cfg = validated(["dataset=synthetic", f"training={defence}"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1, :8], model[1].weight[1, 8:] = 1.0, -1.0
        model[1].bias.copy_(torch.tensor([0.0, bias]))
    adversary = make_adversary(defence, cfg.training, 2, (1, 4, 4), torch.device("cpu"))
    expected = torch.cat([torch.ones(8), -torch.ones(8)]).view(1, 4, 4) * cfg.training.eps
    return cfg, model, adversary, expected


@pytest.mark.parametrize("bias", [0.0, 20.0])  # 20: CE ≈ 20 > β = 12, where the clipped CE has no gradient
def test_uat_delta_step_is_eps_times_the_sign_of_the_mean_ce_gradient(bias, validated):
    cfg, model, adversary, expected = _tiny_uat(validated, bias=bias)
    x, y = torch.full((4, 1, 4, 4), 0.5), torch.zeros(4, dtype=torch.long)
    adversary.ascend(model, x, y)
    assert torch.allclose(adversary.delta, expected)
    adversary.ascend(model, x, y)  # a second step leaves the ε-ball and is projected back onto it
    assert torch.allclose(adversary.delta, expected)


def test_uat_updates_the_weights_first_then_delta_on_the_same_batch(validated):
    """Algorithm 3: batch t trains against δ_t; δ_{t+1} comes from batch t (here y = 0), never from batch t + 1."""
    cfg, model, adversary, expected = _tiny_uat(validated)
    x = torch.full((4, 1, 4, 4), 0.5)
    adversary.loss(model, x, torch.zeros(4, dtype=torch.long), 0)
    assert not adversary.delta.any()  # batch 0 trained against δ_0 = 0
    adversary.loss(model, x, torch.ones(4, dtype=torch.long), 1)  # batch 1 has the opposite gradient sign
    assert torch.allclose(adversary.delta, expected)


def test_uat_resumes_with_its_pending_delta_step(validated):
    cfg, model, adversary, expected = _tiny_uat(validated)
    x = torch.full((4, 1, 4, 4), 0.5)
    adversary.loss(model, x, torch.zeros(4, dtype=torch.long), 0)
    fresh = UAT(cfg.training, 2, (1, 4, 4), torch.device("cpu"))
    fresh.load_state_dict(adversary.state_dict())
    fresh.loss(model, x, torch.ones(4, dtype=torch.long), 1)
    assert torch.allclose(fresh.delta, expected)


def test_fast_uat_steps_delta_by_eps_from_the_training_backward(validated):
    cfg, model, adversary, expected = _tiny_uat(validated, "fast_uat")
    x, y = torch.full((4, 1, 4, 4), 0.5), torch.zeros(4, dtype=torch.long)
    loss, _ = adversary.loss(model, x, y, 0)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not adversary.delta.any()
    adversary.after_backward()
    assert torch.allclose(adversary.delta, expected)


def test_cw_uat_steps_only_the_classes_in_the_batch(validated, tmp_path):
    cfg, data, model, adversary = _setup(validated, "cw_uat", tmp_path)
    x, y = _batch(data)
    keep = y != 3
    adversary.ascend(model, x[keep], y[keep])
    eps = cfg.training.eps
    assert not adversary.delta[3].any()
    for k in range(3):
        size = adversary.delta[k].abs()
        assert torch.all(((size - eps).abs() < 1e-7) | (size == 0))  # ±ε·sign, 0 where the gradient is 0
        assert (size > 0).float().mean() > 0.5


# ---------------------------------------------------------------- one σ-mixed loss


@pytest.mark.parametrize("sigma", [0.0, 0.5])
@pytest.mark.parametrize("defence", ADVERSARIAL)
def test_every_defence_trains_on_the_sigma_mix(defence, sigma, validated, tmp_path):
    """loss = (1 − σ)·CE(clean) + σ·CE(adv) on the same batch; σ = 0 is the natural loss."""
    _, data, model, adversary = _setup(validated, defence, tmp_path, [f"training.sigma={sigma}"])
    model.train()
    _start_epoch(adversary, model, data)
    if hasattr(adversary, "delta"):  # UAT's δ starts at 0: give it a value, so the adversarial term differs
        adversary.delta.uniform_(-adversary.cfg.eps, adversary.cfg.eps)
    x, y = _batch(data)
    loss, logits = adversary.loss(model, x, y, 0)
    with torch.no_grad():
        clean_logits = model(x)
    clean = F.cross_entropy(clean_logits, y)
    assert loss.item() == pytest.approx(((1 - sigma) * clean + sigma * F.cross_entropy(logits, y)).item(), rel=1e-5)
    if sigma == 0:
        assert loss.item() == pytest.approx(clean.item(), rel=1e-6)
    else:  # the adversarial term is there: its logits are not the clean ones
        assert not torch.allclose(logits, clean_logits, atol=1e-4)


@pytest.mark.parametrize("defence", ["uat", "cw_uat", "cb_uat"])
def test_sigma_mix_uses_the_defences_perturbation(defence, validated, tmp_path):
    _, data, model, adversary = _setup(validated, defence, tmp_path, ["training.sigma=0.5"])
    _start_epoch(adversary, model, data)
    target = adversary.pool if defence == "cb_uat" else adversary.delta
    target.fill_(0.05)  # every member / class the same, so the expected input is known
    x, y = _batch(data)
    loss, _ = adversary.loss(model, x, y, 1)
    with torch.no_grad():
        expected = 0.5 * F.cross_entropy(model(x), y) + 0.5 * F.cross_entropy(model((x + 0.05).clamp(0, 1)), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- CB-UAT's pool


def test_cb_uat_refresh_warm_starts_the_pool(validated, tmp_path):
    """With one tiny step per refresh, a warm-started pool moves by at most that step; a fresh start would not."""
    cfg, data, model, adversary = _setup(validated, "cb_uat", tmp_path,
                                         ["training.pool.size=3", "training.pool.refresh_steps=1",
                                          "training.adversary.step_size=0.001"])
    _start_epoch(adversary, model, data)
    first = adversary.pool.clone()
    assert first.shape == (3, 1, 16, 16) and first.abs().max() > 0.05  # independent uniform starts
    assert not torch.equal(first[0], first[1])
    adversary.refresh(model)
    assert adversary.refreshes == 2 and not torch.equal(first, adversary.pool)
    assert (adversary.pool - first).abs().max() <= 0.001 + 1e-6
    assert model.training  # stage 2 trains again after the refresh


def test_cb_uat_refresh_seeds_follow_the_run_seed(validated, tmp_path):
    pools = []
    for seed in (0, 0, 1):
        _, data, model, adversary = _setup(validated, "cb_uat", tmp_path, seed=seed)
        _start_epoch(adversary, model, data)
        pools.append(adversary.pool.clone())
    assert torch.equal(pools[0], pools[1]) and not torch.equal(pools[0], pools[2])


class _Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: holds the network as `.module` and counts its own forwards."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, x):
        self.calls += 1
        return self.module(x)


def test_cb_uat_per_iteration_refresh_crafts_on_the_unwrapped_network(validated, tmp_path):
    _, data, model, adversary = _setup(validated, "cb_uat", tmp_path, ["training.pool.refresh_unit=iter"])
    wrapped = _Wrapper(model)
    _start_epoch(adversary, wrapped, data)
    adversary.loss(wrapped, *_batch(data), 0)  # refreshes first (step 0), then the training forward
    assert adversary.refreshes == 1 and wrapped.calls == 1


def test_cb_uat_worst_member_takes_each_samples_highest_loss_member(validated, tmp_path):
    _, data, model, adversary = _setup(validated, "cb_uat", tmp_path, ["training.pool.member=worst"])
    _start_epoch(adversary, model, data)
    x, y = _batch(data)
    bn = _bn_state(model)
    chosen = adversary.worst_member(model, x, y)
    model.eval()
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(apply_delta(x, d)), y, reduction="none")
                              for d in adversary.pool])
    model.train()
    assert torch.equal(chosen, losses.argmax(0)) and len(set(chosen.tolist())) > 1
    assert all(torch.equal(bn[k], v) for k, v in _bn_state(model).items())  # the choice leaves BatchNorm alone
    assert model.training
    assert torch.isfinite(adversary.loss(model, x, y, 1)[0])


# ---------------------------------------------------------------- model cache and pipeline


def test_model_cache_key_follows_only_what_the_defence_reads(validated):
    from cbuap_runner.networks import model_cache_path
    from cbuap_runner.provenance import weights_key

    def slot(*overrides):
        cfg = validated(["dataset=synthetic", *overrides])
        return model_cache_path(cfg, weights_key(cfg, "data")).parent.name

    base = slot("training=natural")
    assert slot("training=natural", "training.amp=true") != base  # bf16 autocast trains other weights
    assert slot("training=natural", "training.lr=0.01") != base
    assert slot("training=natural", "seed=1") != base
    cb = slot("training=cb_uat")
    assert slot("training=cb_uat", "training.pool.member=worst") != cb
    assert slot("training=cb_uat", "training.adversary.balance.lambda_div=0.5") != cb  # CB-UAT crafts with it
    assert slot("training=uat", "training.adversary.norm=l2") != slot("training=uat")
    natural = weights_key(validated(["dataset=synthetic", "training=natural"]), "data")["training"]
    assert "pool" not in natural and "adversary" not in natural  # another defence's keys are not natural's


@pytest.mark.e2e
def test_attack_reuses_the_cached_model(cli):
    args = ["dataset=synthetic", "training.epochs=1", "attack.crafting_images=64", "attack.passes=2",
            "eval.num_images=64"]
    first, dir1 = cli(args)
    second, dir2 = cli(args)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert (dir1 / "model.pt").is_file() and not (dir2 / "model.pt").exists()
    assert "using the cached model" in (dir2 / "cbuap.log").read_text()
    for d in (dir1, dir2):
        summary = json.loads((d / "run_summary.json").read_text())
        assert {"fooling_rate", "craft_seconds", "craft_images_processed"} <= set(summary["metrics"])
        assert (d / "perturbation.pt").is_file() and (d / "label_hist.png").is_file()


@pytest.mark.e2e
def test_pipeline_reports_each_attack_and_the_worst(cli):
    proc, run_dir = cli(["task=pipeline", "dataset=synthetic", "training=uat", "training.epochs=1",
                         "training.batch_size=32", "attack.crafting_images=64", "attack.passes=2",
                         "attack.batch_size=32", "eval.num_images=64"])
    assert proc.returncode == 0, proc.stderr
    m = json.loads((run_dir / "run_summary.json").read_text())["metrics"]
    assert set(m["attacks"]) == set(ATTACKS)  # every registered attack is crafted and reported
    attacks = [a for a in ATTACKS if not ATTACKS[a].class_wise]  # the worst case is over the universal ones
    accs = [m[f"adv_acc_{a}"] for a in attacks]
    assert m["worst_adv_acc"] == min(accs) and m[f"adv_acc_{m['worst_attack']}"] == m["worst_adv_acc"]
    cells = {(a, k): acc for a in attacks for k, acc in enumerate(m["attacks"][a]["per_class_adv_acc"])
             if acc is not None}
    assert m["worst_class_adv_acc"] == min(cells.values())
    assert cells[(m["worst_class_attack"], m["worst_class"])] == m["worst_class_adv_acc"]
    assert all((run_dir / f"perturbation_{a}.pt").is_file() for a in ATTACKS)
