"""Structured-config schema. Each group has a base dataclass with the keys every option of the group has; each option
(an attack, a defence, a dataset) extends it with its own keys in its own module, and its registry entry names that
schema (`schema=`). OmegaConf checks key names and types when the config is composed (a key the chosen option does
not have is refused then); `check` methods test ranges and cross-field rules once at start-up (`validate`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional

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


# ---------------------------------------------------------------- range checks (each names the key at fault)


def fail(key: str, value: Any, rule: str) -> None:
    raise UserError(f"{key}={to_plain(value)!r}: {rule}")


def positive(key: str, value: Any) -> None:
    if value is None or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        fail(key, value, "must be a finite number > 0")


def non_negative(key: str, value: Any) -> None:
    if not (math.isfinite(value) and value >= 0):
        fail(key, value, "must be a finite number >= 0")


def fraction(key: str, value: Any, rule: str) -> None:
    """A value in (0, 1]; `rule` says what it is."""
    if not (0 < value <= 1):
        fail(key, value, f"must lie in (0, 1]{rule}")


def one_of(key: str, value: Any, options: tuple) -> None:
    if value not in options:
        fail(key, value, f"must be one of {', '.join(options)}")


# ---------------------------------------------------------------- the groups' base schemas


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
    val_per_class: Optional[int] = None  # k' validation images of each class (k' x classes), in place of val_size
    train_subset: Optional[int] = None  # seeded, class-balanced subset of what remains of the training split
    classes: Optional[List[str]] = None  # class names for figures and tables
    # image folders of any size: shorter side resized to `resize`, centre-cropped to `crop` (null: the model's
    # declared preprocessing where it has one, else every image must be image_size x image_size)
    resize: Optional[int] = None
    crop: Optional[int] = None
    interpolation: str = "bilinear"  # nearest | bilinear | bicubic
    # image folders too large to hold are streamed: decoded batch by batch in `workers` processes (null: one per core,
    # at most 8); auto streams a split whose decoded size exceeds resident_max_gib
    stream: str = "auto"  # auto | always | never
    resident_max_gib: float = 4.0
    workers: Optional[int] = None
    decoded_cache: bool = False  # a streamed split decoded once into a uint8 file in cache_dir, then read back
    bad_files: str = "refuse"  # refuse | skip: a file that is no image stops the run, or is left out and counted

    def check(self) -> None:
        for key in ("num_classes", "channels", "image_size", "eps", "val_size"):
            positive(f"dataset.{key}", getattr(self, key))
        if self.num_classes < 2:
            fail("dataset.num_classes", self.num_classes, "must be at least 2")
        for key in ("train_subset", "val_per_class"):
            if getattr(self, key) is not None:
                positive(f"dataset.{key}", getattr(self, key))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            fail("dataset.mean", list(self.mean), f"mean and std need one value per channel ({self.channels})")
        for s in self.std:
            positive("dataset.std", s)
        for key in ("resize", "crop"):
            if getattr(self, key) is not None:
                positive(f"dataset.{key}", getattr(self, key))
        if self.resize is not None and self.crop is None:
            fail("dataset.resize", self.resize, "needs dataset.crop (the size the images are cropped to)")
        one_of("dataset.interpolation", self.interpolation, ("nearest", "bilinear", "bicubic"))
        one_of("dataset.stream", self.stream, ("auto", "always", "never"))
        one_of("dataset.bad_files", self.bad_files, ("refuse", "skip"))
        positive("dataset.resident_max_gib", self.resident_max_gib)
        if self.workers is not None and self.workers < 0:
            fail("dataset.workers", self.workers, "must be 0 (decode in the main process) or more")


@dataclass
class ModelConfig:
    """What every model option has; a source of networks from elsewhere (models/sources.py) extends it."""

    name: str = MISSING
    checkpoint: Optional[str] = None  # a model.pt this tool wrote (trained or fine-tuned), used instead
    channels_last: bool = False
    compile: bool = False  # torch.compile the forward (docs/PERFORMANCE.md: measured, off by default)

    def check(self) -> None:
        pass


@dataclass
class SourceConfig(ModelConfig):
    """What every model source (models/sources.py: a network from elsewhere) has besides the shared model keys."""

    classes: Optional[Any] = None  # null: all; a list of the network's class indices; or "names" (matched)

    def check(self) -> None:
        c = self.classes
        if c is None or c == "names":
            return
        if isinstance(c, str) or not c or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in c):
            fail("model.classes", c, "must be null, names, or a list of the network's class indices")
        if len(set(c)) != len(c):
            fail("model.classes", list(c), "names a class twice")


@dataclass
class AttackConfig:
    """What every attack has: its threat model, its start, and the crafting budget and stopping rule (set them
    here, never per attack, so that a table compares attacks under one budget). Each attack's schema extends it."""

    name: str = MISSING
    eps: float = II("dataset.eps")
    norm: Norm = Norm.linf
    init: Init = Init.zero  # the start of δ: zero or uniform in the ε-ball
    passes: int = 10  # passes over the crafting set
    crafting_images: Optional[int] = 5000  # null = the whole training split
    crafting_per_class: Optional[int] = None  # k images of each class (k x classes), in place of crafting_images
    batch_size: int = 128
    patience: Optional[int] = None  # stop when the validation fooling rate stalls this many passes (null = never)
    tol: float = 1e-3  # ... an improvement of at most this counts as a stall
    fooling_target: Optional[float] = None  # stop once the validation fooling rate reaches this (null = never)
    restarts: int = 1  # craft this many times, each from its own seeded start and image order; the one with the
    # highest validation fooling rate is kept (the strength checks' restarts)
    start: Optional[str] = None  # task=attack: a perturbation.pt (e.g. one crafted on another network) that the
    # crafting starts from in place of `init`, projected into this eps-ball; the record names its sha256

    def check(self, prefix: str, num_classes: int) -> None:
        positive(f"{prefix}.eps", self.eps)
        if self.norm == "linf" and self.eps > 1:
            fail(f"{prefix}.eps", self.eps, "an L-inf budget above 1 is meaningless on [0,1] images")
        for key in ("passes", "batch_size", "restarts"):
            positive(f"{prefix}.{key}", getattr(self, key))
        for key in ("patience", "crafting_images", "crafting_per_class"):
            if getattr(self, key) is not None:
                positive(f"{prefix}.{key}", getattr(self, key))
        if self.fooling_target is not None:
            fraction(f"{prefix}.fooling_target", self.fooling_target, " (a validation fooling rate) or be null")
        non_negative(f"{prefix}.tol", self.tol)
        if self.start is not None and self.restarts > 1:
            fail(f"{prefix}.start", self.start, f"every restart would start from this one δ; set {prefix}.restarts=1")


@dataclass
class ThreatConfig:
    """The threat geometry a defence trains against, for the defences that craft their own perturbations."""

    norm: Norm = Norm.linf


@dataclass
class TrainingConfig:
    """The optimisation every defence has (natural training's schema); each defence's schema extends it."""

    name: str = MISSING
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

    def check(self, num_classes: int) -> None:
        for key in ("epochs", "batch_size", "lr"):
            positive(f"training.{key}", getattr(self, key))
        for key in ("momentum", "weight_decay", "gamma"):
            non_negative(f"training.{key}", getattr(self, key))
        for m in self.milestones:
            if not (0 < m < 1):
                fail("training.milestones", list(self.milestones), "each milestone is a fraction of the run in (0, 1)")


@dataclass
class AdversarialConfig(TrainingConfig):
    """What every adversarial defence adds: the budget it trains against and the loss mix."""

    eps: float = II("dataset.eps")
    # (1 - sigma) CE(clean) + sigma CE(adv). 1.0 = adversarial examples only, the loss of UAT and FastUAT (Shafahi
    # et al. 2020, Alg. 3-4), CW-UAT (Benz et al. 2021) and PGD-AT (Madry et al. 2018); SAT (Mummadi et al. 2019)
    # sweeps this weight as its trade-off. One default for all, so that a comparison at the defaults is like with like.
    sigma: float = 1.0

    def check(self, num_classes: int) -> None:
        super().check(num_classes)
        positive("training.eps", self.eps)
        if self.norm == "linf" and self.eps > 1:
            fail("training.eps", self.eps, "an L-inf budget above 1 is meaningless on [0,1] images")
        if not (0 <= self.sigma <= 1):
            fail("training.sigma", self.sigma, "must lie in [0, 1]")

    @property
    def norm(self) -> str:
        return self.adversary.norm  # every adversarial schema has an `adversary` with the threat's norm


@dataclass
class ThreatTrainingConfig(AdversarialConfig):
    """An adversarial defence with its own perturbation step in the geometry training.adversary.norm."""

    step_size: Optional[float] = None  # null = the paper's convention: uat/fast_uat/cw_uat ε, pgd_at/sat ε/4
    adversary: ThreatConfig = field(default_factory=ThreatConfig)

    def check(self, num_classes: int) -> None:
        super().check(num_classes)
        if self.step_size is not None:
            positive("training.step_size", self.step_size)


@dataclass
class EvalConfig:
    num_images: Optional[int] = None  # null = the whole test split
    batch_size: int = 500
    # write each test image's label and its clean and adversarial predictions beside the record
    # (predictions.npz; a pipeline: predictions_<attack>.npz): what a bootstrap over test images reads
    save_predictions: bool = False


@dataclass
class PipelineConfig:
    # the attacks task=pipeline crafts against the trained model, each from `attack`'s budget (attacks.attack_for);
    # the worst case is taken over the universal ones of this list
    attacks: List[str] = field(default_factory=lambda: ["sgd_uap", "uap", "cb_uap", "cw_uap"])


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
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    task: str = "attack"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    perturbation: Optional[str] = None  # task=evaluate: a perturbation.pt to evaluate
    resume: Any = "auto"  # auto | true | false (a bool or "auto"; OmegaConf 2.3 has no Union[bool, str])
    # a checkpoint.pt of a run that differs from this one only in training.epochs: training starts from it, where
    # their learning rates agree up to its epoch, instead of from epoch 1 (training/branch.py); not in the weights key
    branch_from: Optional[str] = None
    keep_checkpoints: Optional[List[int]] = None  # epochs whose checkpoint.pt is also kept, as checkpoint_epoch<N>.pt
    checkpoint_images: int = 2000  # crafting saves its state after every pass and every this many images (0: passes only)
    cache_dir: str = "outputs/cache"
    progress: Progress = Progress.auto
    deterministic: bool = False
    # the config keys whose values make one table row (its seeds are averaged), e.g. [attack.name, attack.eps], or
    # config groups a sweep chooses (table/tune): each conf/table/* declares them, run_summary.json records them and
    # the report groups runs by them
    rows: Optional[list[str]] = None


_CHOICES = {("logger", "name"): ("local", "wandb")}  # a group option: the name its config node sets
PIPELINE_DEFAULT = PipelineConfig().attacks


def registries() -> dict[tuple[str, ...], Mapping[str, Any]]:
    """The registry behind each name key. Read when validating, not at import: the packages that own the
    registries import this module's config types."""
    from .attacks import ATTACKS
    from .data import DATASETS
    from .models import model_options
    from .tasks import TASKS
    from .training import DEFENCES

    return {("task",): TASKS, ("dataset", "name"): DATASETS, ("model", "name"): model_options(), ("attack", "name"): ATTACKS,
            ("training", "name"): DEFENCES}


def option_schemas() -> dict[str, dict[str, type]]:
    """group -> option -> its schema, for the groups whose options have keys of their own."""
    found = registries()
    return {group: {name: spec.schema for name, spec in found[(group, "name")].items()}
            for group in ("dataset", "model", "attack", "training")}


def _has_key(node: Any, parts: list[str]) -> bool:
    for part in parts:
        if not (is_dataclass(node) and part in {f.name for f in fields(node)}):
            return False
        node = getattr(node, part)
    return True


def options_having(key: str) -> tuple[str, list[str]] | None:
    """For a dotted key under a group whose options have schemas of their own: the group and the options that
    have the key (None for any other key)."""
    group, _, rest = key.partition(".")
    schemas = option_schemas().get(group)
    if not schemas or not rest:
        return None
    return group, [name for name, schema in schemas.items() if _has_key(schema(name=name), rest.split("."))]


def options_of(group: str, schema: type) -> list[str]:
    """The options of `group` whose schema is `schema`."""
    return [name for name, s in option_schemas().get(group, {}).items() if s is schema]


def check_schema(prefix: str, node: Any, schemas: Mapping[str, type], group: str) -> None:
    """A config node must be its option's schema: `name` names the option and is set by choosing it."""
    if type(node) is not schemas[node.name]:
        fail(f"{prefix}.name", node.name, f"an option's name is set by choosing the option ({group}={node.name}), "
             "not by the key alone")


def validate(cfg: Config) -> None:
    """All start-up checks; raises UserError naming the first offending key."""
    for path, registry in registries().items():
        one_of(".".join(path), _at_path(cfg, path), tuple(registry))
    for path, options in _CHOICES.items():
        one_of(".".join(path), _at_path(cfg, path), options)
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        fail("device", cfg.device, "must be auto, cpu, cuda or cuda:N")
    if not (isinstance(cfg.resume, bool) or cfg.resume == "auto"):
        fail("resume", cfg.resume, "must be auto, true or false")
    if cfg.branch_from is not None and not Path(cfg.branch_from).expanduser().is_file():
        fail("branch_from", cfg.branch_from, "no such file: give a training run's checkpoint.pt (a run that has a "
             "checkpoint.pt of its own no longer reads it: drop branch_from to continue that)")
    for group, schemas in option_schemas().items():
        check_schema(group, getattr(cfg, group), schemas, group)
    cfg.dataset.check()
    cfg.model.check()
    num_classes = cfg.dataset.num_classes
    cfg.attack.check("attack", num_classes)
    cfg.training.check(num_classes)
    _validate_pipeline(cfg)
    if cfg.attack.start is not None and cfg.task != "attack":
        fail("attack.start", cfg.attack.start, f"task={cfg.task} crafts from no given start; task=attack reads it")
    _validate_rows(cfg)
    non_negative("checkpoint_images", cfg.checkpoint_images)
    for epoch in cfg.keep_checkpoints or ():  # (one past the run's end is never reached: a table sweeps lengths)
        if not (isinstance(epoch, int) and epoch >= 1):
            fail("keep_checkpoints", list(cfg.keep_checkpoints), "each must be an epoch number, 1 or more")
    positive("eval.batch_size", cfg.eval.batch_size)
    if cfg.eval.num_images is not None:
        positive("eval.num_images", cfg.eval.num_images)


_GROUP_CHOICE = re.compile(r"\w+(/\w+)+")  # a config group a run chooses, `table/tune` of `+table/tune=pull1`


def _validate_rows(cfg: Config) -> None:
    for key in cfg.rows or ():
        if _GROUP_CHOICE.fullmatch(key):  # the run's overrides record its choice
            continue
        if key == "seed" or _at_path(cfg, tuple(key.split("."))) is _ABSENT:
            fail("rows", key, "must name config keys other than seed (the seeds of one row are averaged) or config "
                 "groups such as table/tune")


def _validate_pipeline(cfg: Config) -> None:
    from .attacks import ATTACKS, attack_for

    names = list(cfg.pipeline.attacks)
    if cfg.task != "pipeline":
        if names != PIPELINE_DEFAULT:
            fail("pipeline.attacks", names, f"task={cfg.task} crafts no pipeline; task=pipeline reads it")
        return
    if not names or len(set(names)) != len(names):
        fail("pipeline.attacks", names, "must name at least one attack, each once")
    for name in names:
        one_of("pipeline.attacks", name, tuple(ATTACKS))
    if all(ATTACKS[name].class_wise for name in names):
        fail("pipeline.attacks", names, "needs a universal attack (one δ for every image) for its worst case")
    for name in names:
        attack_for(cfg.attack, name).check(f"pipeline.attacks[{name}]", cfg.dataset.num_classes)


_ABSENT = object()


def _at_path(cfg: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` (attribute names), or _ABSENT where the config has no such key."""
    for part in path:
        cfg = getattr(cfg, part, _ABSENT)
        if cfg is _ABSENT:
            break
    return cfg


def changed_keys(value: Any, usual: Any, key: str) -> Iterator[tuple[str, Any]]:
    """The keys under `key` whose value differs from the default `usual`, section by section; an interpolated
    default such as `${dataset.eps}` follows another key and never counts."""
    if isinstance(usual, str) and usual.startswith("${"):
        return
    if is_dataclass(value) and is_dataclass(usual):
        for f in fields(value):
            yield from changed_keys(getattr(value, f.name), getattr(usual, f.name), f"{key}.{f.name}")
    elif value != usual:
        yield key, value


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
    """Store the schemas that conf/ extends: the root config, the model and logger bases (`/base_<group>@_here_`)
    and each option's own schema (`/schema/<group>/<option>@_here_`), the one an option's registry entry names."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(name="base_model", node=ModelConfig)
    cs.store(name="base_logger", node=LoggerConfig)
    for group, schemas in option_schemas().items():
        for name, schema in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=schema(name=name))
