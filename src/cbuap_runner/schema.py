"""Structured-config schema: key names and types are checked by OmegaConf, ranges and
cross-field rules by `validate` once at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Iterator, List, Mapping, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from .errors import UserError


class Choice(str, Enum):
    """A closed choice: OmegaConf accepts only its members' names; a member compares equal to, hashes and prints
    as its value (the name), so code and records read it as that string."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


def _choice(name: str, *values: str) -> type[Choice]:
    return Choice(name, {v: v for v in values}, module=__name__, qualname=name)


Norm = _choice("Norm", "linf", "l2")
Optimizer = _choice("Optimizer", "sign", "adam")
Init = _choice("Init", "zero", "uniform")
Loss = _choice("Loss", "ce", "cw")
Calibration = _choice("Calibration", "none", "exclude_true", "temperature")
Penalty = _choice("Penalty", "none", "hinge", "frequency")
PenaltyWeights = _choice("PenaltyWeights", "indicator", "histogram")
Batching = _choice("Batching", "exact", "relaxed")
Clamp = _choice("Clamp", "held", "point")
Schedule = _choice("Schedule", "cosine", "step", "constant")
ModelMode = _choice("ModelMode", "eval", "train")
RefreshUnit = _choice("RefreshUnit", "epoch", "iter")
PoolMember = _choice("PoolMember", "random", "worst")
LoggerMode = _choice("LoggerMode", "online", "offline", "disabled")
Progress = _choice("Progress", "auto", "on", "off")


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = MISSING
    download: bool = True
    num_classes: int = MISSING
    channels: int = MISSING
    image_size: int = MISSING
    mean: List[float] = MISSING
    std: List[float] = MISSING
    eps: float = MISSING  # this dataset's default attack budget (L-inf, [0,1] pixels)
    crop_padding: int = 0  # random-crop augmentation padding; 0 = no crop
    hflip: bool = False
    val_size: int = 5000  # seeded, class-balanced validation images carved from the training split (never trained on)
    train_subset: Optional[int] = None  # seeded, class-balanced subset of what remains of the training split
    synthetic_size: int = 512  # dataset=synthetic only
    classes: Optional[List[str]] = None  # class names for figures and tables


@dataclass
class ModelConfig:
    name: str = MISSING
    checkpoint: Optional[str] = None
    channels_last: bool = False
    compile: bool = False  # torch.compile the forward (docs/PERFORMANCE.md: measured, off by default)


@dataclass
class BalanceConfig:
    """attack=cb_uap's class-balance terms (docs/method.md, CB-UAP). The weights are the setting chosen by
    table=tune_cb_uap on the validation split; every weight at zero, class_reweight off and dro_eta null reproduce sgd_uap."""

    calibration: Calibration = Calibration.exclude_true
    temperature: float = 1.0
    lambda_div: float = 0.5  # diversity H(mean q) of the calibrated distributions
    lambda_conf: float = 0.0  # sharpness of each calibrated distribution
    lambda_pen: float = 0.5  # penalty on the classes above 1/K of the mean q
    penalty: Penalty = Penalty.hinge
    penalty_weights: PenaltyWeights = PenaltyWeights.indicator  # hinge only
    ema: bool = False
    ema_decay: float = 0.9
    start: int = 0  # passes of plain SGD-UAP before the balance terms switch on
    stop: Optional[int] = None  # switch the balance terms off again from this pass on (null = never)
    class_reweight: bool = False  # reweight the attack loss towards classes that are fooled least
    lambda_ramp: int = 0  # ramp the balance weights linearly over this many balanced passes (0 = full at once)
    fooling_guard: Optional[float] = None  # scale the balance terms down as the crafting fooling rate drops up to this below its best
    lambda_pull: float = 0.0  # pull each fooled image toward its wrong-class target, targets balanced over classes (Sinkhorn)
    dro_eta: Optional[float] = None  # group-DRO weights on the attack loss: step size of the per-batch class-weight update


@dataclass
class DeepFoolConfig:
    """attack=uap's DeepFool (docs/method.md, DeepFool UAP)."""

    overshoot: float = 0.02  # DeepFool's (1 + overshoot) on the accumulated step
    iters: int = 10  # the reference's max_iter_df: a step is added to v only if the label changed within iters - 2
    clamp: Clamp = Clamp.held  # held: DeepFool differentiates through the clamp; point: at the clamped point (docs/method.md)
    candidates: int = 10  # the most likely classes DeepFool considers (the current one included)
    norm: Norm = Norm.l2  # l2: the reference DeepFool; linf: the DeepFool step in L-inf geometry
    batching: Batching = Batching.exact  # exact: the sequential loop's result; relaxed: chunks of images share one v
    chunk: int = 32  # relaxed: images per chunk


@dataclass
class AttackConfig:
    name: str = "sgd_uap"
    eps: float = II("dataset.eps")
    norm: Norm = Norm.linf
    # the crafting budget and stopping rule, shared by every attack (set them here, never per attack)
    passes: int = 10  # passes over the crafting set
    crafting_images: Optional[int] = 5000  # null = the whole training split
    batch_size: int = 128
    patience: Optional[int] = None  # stop when the validation fooling rate stalls this many passes (null = never)
    tol: float = 1e-3  # ... an improvement of at most this counts as a stall
    fooling_target: Optional[float] = None  # stop once the validation fooling rate reaches this (null = never)
    optimizer: Optimizer = Optimizer.sign
    step_size: Optional[float] = None  # sign step; null = eps / 4 (L2: eps / 4 along the unit gradient)
    step_decay: float = 0.8  # multiplies the step after every pass
    adam_lr: float = 5e-3
    init: Init = Init.zero
    num_starts: int = 1  # M independent perturbations crafted as one [M,C,H,W] tensor
    loss: Loss = Loss.ce
    beta: float = 12.0  # clip of the cross-entropy
    kappa: float = 10.0  # clip of the CW margin
    target: Optional[int] = None  # targeted attack towards this class
    balance: BalanceConfig = field(default_factory=BalanceConfig)  # cb_uap
    deepfool: DeepFoolConfig = field(default_factory=DeepFoolConfig)  # uap


@dataclass
class PGDConfig:
    steps: int = 10  # PGD steps per batch (pgd_at, sat)


@dataclass
class SATConfig:
    heap_size: int = 16  # samples that share one perturbation


@dataclass
class PoolConfig:
    """cb_uat's stage 1: a pool of CB-UAPs refreshed against the frozen model."""

    size: int = 4  # M perturbations in the pool
    # the schedule chosen on validation (table=cb_uat_variants): 5 steps every 43 iterations, about ten refreshes per
    # epoch of 55,000 images, beat one 20-step refresh per epoch on clean and worst-case validation accuracy
    refresh_every: int = 43  # refresh the pool every k units
    refresh_unit: RefreshUnit = RefreshUnit.iter
    refresh_steps: int = 5  # S minibatch steps per refresh
    member: PoolMember = PoolMember.random  # stage 2 trains each sample on a random member, or on its worst one


@dataclass
class TrainingConfig:
    """Every training default lives here (natural training's settings); conf/training/<name>.yaml sets only what
    its defence changes."""

    name: str = "natural"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Schedule = Schedule.cosine
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the run
    gamma: float = 0.1
    amp: bool = False  # bf16 autocast on CUDA
    init_checkpoint: Optional[str] = None  # start from these weights (e.g. a natural model)
    # adversarial training (every defence but natural; the threat geometry is training.adversary.norm: linf | l2)
    eps: float = II("dataset.eps")
    step_size: Optional[float] = None  # null = the paper's convention: uat/fast_uat/cw_uat ε, pgd_at/sat ε/4 (cb_uat: unread)
    # (1 - sigma) CE(clean) + sigma CE(adv), read by every defence but natural. 1.0 = adversarial examples only, the
    # loss of UAT and FastUAT (Shafahi et al. 2020, Alg. 3-4), CW-UAT (Benz et al. 2021) and PGD-AT (Madry et al.
    # 2018); SAT (Mummadi et al. 2019) sweeps this weight as its trade-off. One default for all, so that a
    # comparison at the defaults is like with like.
    sigma: float = 1.0
    # uat / cw_uat: the model's mode during the δ step. eval = as every evaluation attack sees it (running statistics
    # untouched); train = batch statistics and updated running statistics, kept only to measure the difference
    delta_model_mode: ModelMode = ModelMode.eval
    pgd: PGDConfig = field(default_factory=PGDConfig)  # pgd_at, sat
    sat: SATConfig = field(default_factory=SATConfig)  # sat
    pool: PoolConfig = field(default_factory=PoolConfig)  # cb_uat
    # the threat model of every defence (norm); cb_uat reads all of it: its stage-1 attack
    adversary: AttackConfig = field(default_factory=lambda: AttackConfig(eps=II("training.eps")))


@dataclass
class EvalConfig:
    num_images: Optional[int] = None  # null = the whole test split
    batch_size: int = 500


@dataclass
class LoggerConfig:
    name: str = "local"  # local | wandb
    mode: LoggerMode = LoggerMode.offline
    project: str = "cbuap-runner"
    entity: Optional[str] = None
    group: Optional[str] = None
    job_type: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    dir: Optional[str] = None  # null = the run directory


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    attack: AttackConfig = MISSING
    training: TrainingConfig = MISSING
    logger: LoggerConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: str = "attack"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    perturbation: Optional[str] = None  # task=evaluate: a perturbation.pt to evaluate
    resume: Any = "auto"  # auto | true | false (a bool or "auto"; OmegaConf 2.3 has no Union[bool, str])
    cache_dir: str = "outputs/cache"
    progress: Progress = Progress.auto
    deterministic: bool = False


_CHOICES = {("logger", "name"): ("local", "wandb")}  # a group option: the name its config node sets


def registries() -> dict[tuple[str, ...], Mapping[str, Any]]:
    """The registry behind each name key. Read when validating, not at import: the packages that own the
    registries import this module's config types."""
    from .attacks import ATTACKS
    from .data import DATASETS
    from .models import MODELS
    from .tasks import TASKS
    from .training import DEFENCES

    return {("task",): TASKS, ("dataset", "name"): DATASETS, ("model", "name"): MODELS, ("attack", "name"): ATTACKS,
            ("training", "name"): DEFENCES}


def _fail(key: str, value: Any, rule: str) -> None:
    raise UserError(f"{key}={value!r}: {rule}")


def _positive(key: str, value: Any) -> None:
    if value is None or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        _fail(key, value, "must be a finite number > 0")


def _non_negative(key: str, value: Any) -> None:
    if not (math.isfinite(value) and value >= 0):
        _fail(key, value, "must be a finite number >= 0")


def _one_of(key: str, value: Any, options: tuple) -> None:
    if value not in options:
        _fail(key, value, f"must be one of {', '.join(options)}")


def _changed(key: str, value: Any, usual: Any) -> Iterator[tuple[str, Any]]:
    """The keys under `key` whose value differs from the default `usual`, section by section; an interpolated
    default such as `${dataset.eps}` follows another key and never counts."""
    if isinstance(usual, str) and usual.startswith("${"):
        return
    if is_dataclass(value) and is_dataclass(usual):
        for f in fields(value):
            yield from _changed(f"{key}.{f.name}", getattr(value, f.name), getattr(usual, f.name))
    elif value != usual:
        yield key, value


def _unread(prefix: str, config: Any, default: Any, option: str, registry: Mapping[str, Any],
            always: frozenset[str]) -> None:
    """Refuse a key of `config` (or of one of its sections) that `option` does not read but that was set; the
    registry entries say what each option reads (`reads`)."""
    group, name = option.split("=")
    for f in fields(config):
        if f.name in always or f.name in registry[name].reads:
            continue
        for key, value in _changed(f"{prefix}.{f.name}", getattr(config, f.name), getattr(default, f.name)):
            readers = [n for n, spec in registry.items() if f.name in spec.reads]
            _fail(key, to_plain(value), f"{option} does not read {prefix}.{f.name}; "
                  + (f"{group}={', '.join(readers)} do" if readers else f"no {group} option reads it"))


def validate_attack(a: AttackConfig, prefix: str, num_classes: int, every_attack: bool = False) -> None:
    """Range and cross-field checks of one attack configuration, and no key set that the attack does not read
    (unless `every_attack`: the base config from which task=pipeline derives every attack)."""
    from .attacks import ATTACKS, SHARED_KEYS

    _one_of(f"{prefix}.name", a.name, tuple(ATTACKS))
    if not every_attack:
        _unread(prefix, a, AttackConfig(), f"attack={a.name}", ATTACKS, SHARED_KEYS)
    _positive(f"{prefix}.eps", a.eps)
    if a.norm == "linf" and a.eps > 1:
        _fail(f"{prefix}.eps", a.eps, "an L-inf budget above 1 is meaningless on [0,1] images")
    for key in ("passes", "batch_size", "num_starts"):
        _positive(f"{prefix}.{key}", getattr(a, key))
    if a.patience is not None:
        _positive(f"{prefix}.patience", a.patience)
    if a.fooling_target is not None and not (0 < a.fooling_target <= 1):
        _fail(f"{prefix}.fooling_target", a.fooling_target, "must lie in (0, 1] (a validation fooling rate) or be null")
    if a.crafting_images is not None:
        _positive(f"{prefix}.crafting_images", a.crafting_images)
    if a.step_size is not None:
        _positive(f"{prefix}.step_size", a.step_size)
    for key in ("adam_lr", "beta", "kappa"):
        _positive(f"{prefix}.{key}", getattr(a, key))
    _non_negative(f"{prefix}.tol", a.tol)
    if not (0 < a.step_decay <= 1):
        _fail(f"{prefix}.step_decay", a.step_decay, "must lie in (0, 1]")
    if a.num_starts > 1 and a.init == "zero":
        _fail(f"{prefix}.num_starts", a.num_starts, f"starts from zero are identical perturbations; set {prefix}.init=uniform")
    if a.target is not None and not (0 <= a.target < num_classes):
        _fail(f"{prefix}.target", a.target, f"must be a class index in [0, {num_classes - 1}]")
    _validate_balance(a.balance, f"{prefix}.balance")
    _validate_deepfool(a.deepfool, f"{prefix}.deepfool")


def _validate_balance(b: BalanceConfig, prefix: str) -> None:
    _positive(f"{prefix}.temperature", b.temperature)
    if b.temperature < 1:
        _fail(f"{prefix}.temperature", b.temperature, "must be >= 1")
    for key in ("lambda_div", "lambda_conf", "lambda_pen", "lambda_pull", "start", "lambda_ramp"):
        _non_negative(f"{prefix}.{key}", getattr(b, key))
    if b.dro_eta is not None:
        _positive(f"{prefix}.dro_eta", b.dro_eta)
    if b.stop is not None and b.stop <= b.start:
        _fail(f"{prefix}.stop", b.stop, "must exceed start (or be null)")
    if b.fooling_guard is not None and not (0 < b.fooling_guard <= 1):
        _fail(f"{prefix}.fooling_guard", b.fooling_guard, "must lie in (0, 1] (a fooling-rate margin) or be null")
    if not (0 < b.ema_decay <= 1):
        _fail(f"{prefix}.ema_decay", b.ema_decay, "must lie in (0, 1]")


def _validate_deepfool(d: DeepFoolConfig, prefix: str) -> None:
    for key in ("iters", "candidates", "chunk"):
        _positive(f"{prefix}.{key}", getattr(d, key))
    if d.iters < 3:
        _fail(f"{prefix}.iters", d.iters, "must be >= 3: a step counts only if DeepFool changed the label within "
              "iters - 2 iterations (the reference's iter < max_iter_df - 1)")
    _non_negative(f"{prefix}.overshoot", d.overshoot)


def validate_training(t: TrainingConfig, num_classes: int) -> None:
    """Range and cross-field checks of the training configuration, and no key set that the defence does not read;
    training.adversary is checked as an attack when the defence crafts with it (cb_uat), else only its norm is read."""
    from .training import DEFENCES, SHARED_KEYS

    _one_of("training.name", t.name, tuple(DEFENCES))
    spec = DEFENCES[t.name]
    _unread("training", t, TrainingConfig(), f"training={t.name}", DEFENCES, SHARED_KEYS)
    for key in ("epochs", "batch_size", "lr", "eps"):
        _positive(f"training.{key}", getattr(t, key))
    for key in ("steps",):
        _positive(f"training.pgd.{key}", getattr(t.pgd, key))
    _positive("training.sat.heap_size", t.sat.heap_size)
    for key in ("size", "refresh_every", "refresh_steps"):
        _positive(f"training.pool.{key}", getattr(t.pool, key))
    if t.adversary.norm == "linf" and t.eps > 1:
        _fail("training.eps", t.eps, "an L-inf budget above 1 is meaningless on [0,1] images")
    for key in ("momentum", "weight_decay", "gamma"):
        _non_negative(f"training.{key}", getattr(t, key))
    if t.step_size is not None:
        _positive("training.step_size", t.step_size)
    if not (0 <= t.sigma <= 1):
        _fail("training.sigma", t.sigma, "must lie in [0, 1]")
    for m in t.milestones:
        if not (0 < m < 1):
            _fail("training.milestones", list(t.milestones), "each milestone is a fraction of the run in (0, 1)")
    if spec.crafts_with_adversary:
        for key, pool_value in (("num_starts", 1), ("init", "zero")):  # the pool sets them (training.pool.size)
            if getattr(t.adversary, key) != pool_value:
                _fail(f"training.adversary.{key}", getattr(t.adversary, key),
                      f"training={t.name} sets it from its pool (training.pool.size, uniform starts)")
        _refuse_pass_keys(t.adversary, t.name)
        validate_attack(t.adversary, "training.adversary", num_classes)
    else:
        crafting = ", ".join(n for n, d in DEFENCES.items() if d.crafts_with_adversary)
        for f in fields(AttackConfig):
            if f.name not in ("name", "eps", "norm"):
                for key, value in _changed(f"training.adversary.{f.name}", getattr(t.adversary, f.name),
                                           getattr(AttackConfig(), f.name)):
                    _fail(key, to_plain(value), f"training={t.name} reads only training.adversary.norm; "
                          f"training={crafting} craft with the whole adversary")


# what a pool refresh cannot honour: it runs training.pool.refresh_steps minibatch steps of one pass on
# refresh_steps · batch_size images of its own choosing, with no validation split and no pass schedule
REFRESH_UNREAD = ("passes", "crafting_images", "patience", "tol", "fooling_target", "step_decay", "balance.start",
                  "balance.stop", "balance.lambda_ramp")


def _refuse_pass_keys(adversary: AttackConfig, defence: str) -> None:
    default = AttackConfig()
    for key in REFRESH_UNREAD:
        value, usual = _get(adversary, tuple(key.split("."))), _get(default, tuple(key.split(".")))
        if value != usual:
            _fail(f"training.adversary.{key}", to_plain(value),
                  f"training={defence} refreshes its pool with training.pool.refresh_steps minibatch steps of one "
                  "pass (no passes, stopping rule or pass schedule); set training.pool.* instead")


def validate(cfg: Config) -> None:
    """All start-up checks; raises UserError naming the first offending key."""
    for path, registry in registries().items():
        _one_of(".".join(path), _get(cfg, path), tuple(registry))
    for path, options in _CHOICES.items():
        _one_of(".".join(path), _get(cfg, path), options)
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        _fail("device", cfg.device, "must be auto, cpu, cuda or cuda:N")
    if not (isinstance(cfg.resume, bool) or cfg.resume == "auto"):
        _fail("resume", cfg.resume, "must be auto, true or false")
    d = cfg.dataset
    for key in ("num_classes", "channels", "image_size", "eps", "synthetic_size"):
        _positive(f"dataset.{key}", getattr(d, key))
    if d.num_classes < 2:
        _fail("dataset.num_classes", d.num_classes, "must be at least 2")
    if d.train_subset is not None:
        _positive("dataset.train_subset", d.train_subset)
    _positive("dataset.val_size", d.val_size)
    if len(d.mean) != d.channels or len(d.std) != d.channels:
        _fail("dataset.mean", list(d.mean), f"mean and std need one value per channel ({d.channels})")
    for s in d.std:
        _positive("dataset.std", s)
    from .tasks import TASKS

    validate_attack(cfg.attack, "attack", d.num_classes, every_attack=TASKS[cfg.task].attacks == "every")
    validate_training(cfg.training, d.num_classes)
    _positive("eval.batch_size", cfg.eval.batch_size)
    if cfg.eval.num_images is not None:
        _positive("eval.num_images", cfg.eval.num_images)


def _get(cfg: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        cfg = getattr(cfg, part)
    return cfg


def to_plain(obj: Any) -> Any:
    """A dataclass config as plain dicts, lists and strings (for JSON, torch.save and wandb)."""
    if isinstance(obj, Enum):
        return obj.value
    if is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def register_configs() -> None:
    """Store the schemas as root configs, not group options, that conf/<group>/*.yaml extend (`/base_<group>@_here_`)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for name, node in (("dataset", DatasetConfig), ("model", ModelConfig), ("attack", AttackConfig),
                       ("training", TrainingConfig), ("logger", LoggerConfig)):
        cs.store(name=f"base_{name}", node=node)
