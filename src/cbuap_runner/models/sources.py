"""Model sources: networks the tool did not train, used as they are (`model=torchvision`, `model=timm`,
`model=robustbench`, `model=module`, `model=scripted`).

Every source yields a `Network`: a module that takes [0,1] images and normalises inside itself, in eval mode; its
number of classes and class names where it has them; the preprocessing it expects of images (resize, centre
crop, interpolation) where it declares one; and a description that run_summary.json records (the source, the
architecture, the weights and the SHA-256 of the file they came from), so a record names exactly which network it
attacked.

- torchvision: `model.arch` is any classification model torchvision lists; `model.weights` a weights enum name
  (`IMAGENET1K_V2`, `DEFAULT`), a path to a state-dict file, or null (random initialisation, seeded). An enum's
  classes, normalisation and preprocessing come from its metadata. Its file is looked for in torch's hub cache
  (`$TORCH_HOME/hub/checkpoints`, the file name of its URL) and downloaded there where a network exists; since the
  hub does not re-hash a file already cached, the SHA-256 prefix the file name carries is checked here first.
  Architectures with auxiliary heads (GoogLeNet, Inception-v3) are built as torchvision builds them; their
  train-mode outputs are reduced to the main logits.
- timm (the `timm` extra): `model.arch` any `timm.list_models()` name (with its pretrained tag, e.g.
  `resnet50.a1_in1k`); `model.weights` `pretrained` (timm's own download and cache), a local weights file (read
  through timm's pretrained-config overlay, so timm's own key filtering and head handling apply), or null (random
  initialisation, seeded). Preprocessing from timm's pretrained config: input size, `crop_pct` (the resize is
  input size / crop_pct, as timm's eval transform does), interpolation, mean and std.
- robustbench (the `robustbench` extra): a network of RobustBench's model zoo, `model.arch` its zoo name with
  `model.dataset` and `model.threat`, its weights file where RobustBench keeps it (`<model.dir>/<dataset>/<threat>/
  <arch>.pt`); models/robustbench_source.py.
- module: your own `nn.Module` class by dotted path (`model.target`, Hydra's `_target_` convention) with keyword
  arguments (`model.kwargs`), and a state-dict file (`model.weights`, or null for its own initialisation).
- scripted: a network shipped without code, a TorchScript archive (`torch.jit.save`) or a `torch.export` archive
  (`.pt2`), at `model.path`.

A module or scripted network, and torchvision's without an enum, normalise with the dataset's mean and std.

`model.classes` (every source) attacks a subset of the network's classes: a list of its class indices in the
dataset's class order (CIFAR-10's classes against a 10-class head of another order, an ImageNet-100 subset), or
`names` to match the dataset's class names to the network's; the logits are restricted to those classes. Where
both sides have class names they must agree (case, spaces, underscores and hyphens aside); WordNet ids (ImageNet
folder names) are not compared with words.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import MISSING
from torch import nn

from ..data.folder import Preprocessing
from ..errors import UserError
from ..io import safe_torch_load
from ..provenance import digest, file_sha256, state_dict_fingerprint
from ..schema import ModelConfig, SourceConfig, fail
from . import Normalized
from .robustbench_source import RobustBenchConfig, load_robustbench, robustbench_preprocessing

HUB_HASH = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: the SHA-256 prefix in a weights file's name
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass
class Network:
    """What every model source yields."""

    model: nn.Module  # [0,1] images in, logits out; eval mode
    num_classes: Optional[int]  # None: the dataset's (a head built for it)
    class_names: Optional[list[str]]
    preprocessing: Optional[Preprocessing]
    description: dict[str, Any]  # recorded as provenance.model


# ---------------------------------------------------------------- schemas


@dataclass
class TorchvisionConfig(SourceConfig):
    """A torchvision classification model."""

    arch: str = MISSING  # any name torchvision.models.list_models() gives for classification
    weights: Optional[str] = "DEFAULT"  # a weights enum name, a state-dict file, or null (random init)

    def check(self) -> None:
        super().check()
        from torchvision import models

        names = models.list_models(module=models)
        if self.arch not in names:
            close = [n for n in names if n.startswith(self.arch[:4])] or names[:8]
            fail("model.arch", self.arch, f"torchvision has no classification model of that name; e.g. {', '.join(close)}")


@dataclass
class TimmConfig(SourceConfig):
    """A timm model (the `timm` extra)."""

    arch: str = MISSING  # a timm.list_models() name, e.g. resnet50.a1_in1k
    weights: Optional[str] = "pretrained"  # pretrained (timm's download and cache), a local file, or null

    def check(self) -> None:
        super().check()
        timm = _timm()
        if not timm.is_model(self.arch.split(".")[0]):
            fail("model.arch", self.arch, "timm has no model of that name (timm.list_models() lists them)")


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("model=timm: timm is not installed; pip install 'cbuap-runner[timm]'") from None
    return timm


@dataclass
class ModuleConfig(SourceConfig):
    """Your own nn.Module class, built by dotted path with keyword arguments."""

    target: str = MISSING  # package.module.Class (importable)
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None  # a state-dict file; null: the module's own initialisation

    def check(self) -> None:
        super().check()
        if "." not in self.target:
            fail("model.target", self.target, "must be a dotted path package.module.Class")


@dataclass
class ScriptedConfig(SourceConfig):
    """A network without code: a TorchScript or torch.export archive."""

    path: str = MISSING


# ---------------------------------------------------------------- loading


def _file(path: str, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{key}={path!r}: no such file")
    return p


def _refuse_web_page(path: Path, key: str) -> None:
    """A download that saved an HTML page (a login or quota page) under a weights file's name."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
        raise UserError(f"{key}={str(path)!r}: holds a web page or text, not weights; download the file again")


def _state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    _refuse_web_page(path, key)
    blob = safe_torch_load(path, key)
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(f"{key}={str(path)!r}: not a state dict (a mapping of parameter names to tensors)")
    return blob


def _load_weights(net: nn.Module, state: dict[str, torch.Tensor], path: Path, key: str) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as ex:
        raise UserError(f"{key}={str(path)!r}: the weights do not fit the network ({str(ex).splitlines()[0]})") from ex


def hub_file(url: str) -> Path:
    """Where torch's hub cache keeps the file of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def checked_hub_file(url: str, key: str) -> Path:
    """The hub-cached file of `url`, downloaded where a network exists, its SHA-256 checked against the prefix its
    name carries (the hub does not re-hash a cached file)."""
    path = hub_file(url)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as ex:  # offline: URLError, socket errors, ...
            raise UserError(f"{key}: {path.name} is not in torch's hub cache and could not be downloaded "
                            f"({type(ex).__name__}); put the file of {url} at {path}") from ex
    found = HUB_HASH.search(path.name)
    sha = file_sha256(path)
    if found and not sha.startswith(found.group(1)):
        raise UserError(f"{key}: {path} has SHA-256 {sha[:12]}…, its name says {found.group(1)}…: not the file "
                        f"torchvision publishes; delete it and put the file of {url} there")
    return path


def _torchvision_enum(cfg: TorchvisionConfig) -> Any:
    from torchvision.models import get_model_weights

    weights = get_model_weights(cfg.arch)
    name = "DEFAULT" if cfg.weights == "DEFAULT" else cfg.weights
    try:
        return weights.DEFAULT if name == "DEFAULT" else weights[name]
    except KeyError:
        raise UserError(f"model.weights={cfg.weights!r}: {cfg.arch} has the weights "
                        f"{', '.join(w.name for w in weights)}, DEFAULT, a state-dict file or null") from None


def _is_enum_name(weights: Optional[str]) -> bool:
    return weights is not None and re.fullmatch(r"[A-Z0-9_]+", weights) is not None


def torchvision_preprocessing(cfg: TorchvisionConfig) -> Optional[Preprocessing]:
    """The preprocessing an enum's metadata declares (None without an enum), read without loading weights."""
    if not _is_enum_name(cfg.weights):
        return None
    t = _torchvision_enum(cfg).transforms()
    resize = t.resize_size[0] if t.resize_size else None
    return Preprocessing(resize, int(t.crop_size[0]), t.interpolation.value)


def load_torchvision(cfg: TorchvisionConfig, ctx: SourceContext) -> Network:
    from torchvision import __version__ as tv_version
    from torchvision.models import get_model

    description = {"source": "torchvision", "arch": cfg.arch, "weights": cfg.weights, "torchvision": tv_version}
    if _is_enum_name(cfg.weights):
        enum = _torchvision_enum(cfg)
        path = checked_hub_file(enum.url, f"model.weights={cfg.weights}")
        net = get_model(cfg.arch, weights=enum)  # reads the checked file from the hub cache
        t = enum.transforms()
        categories = list(enum.meta["categories"])
        description.update(weights=f"{type(enum).__name__}.{enum.name}", file=str(path), sha256=file_sha256(path))
        return Network(Normalized(net, list(t.mean), list(t.std)).eval(), len(categories), categories,
                       torchvision_preprocessing(cfg), description)
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        net = get_model(cfg.arch, weights=None, num_classes=ctx.num_classes)
    if cfg.weights is None:
        description.update(init_seed=ctx.seed, num_classes=ctx.num_classes)
    else:
        path = _file(cfg.weights, "model.weights")
        _load_weights(net, _state_dict(path, "model.weights"), path, "model.weights")
        description.update(file=str(path), sha256=file_sha256(path))
    return Network(Normalized(net, ctx.mean, ctx.std).eval(), ctx.num_classes, None, None, description)


def timm_preprocessing(cfg: TimmConfig) -> Optional[Preprocessing]:
    """The eval preprocessing timm's pretrained config declares (None for a random initialisation)."""
    if cfg.weights is None:
        return None
    pre = _timm().get_pretrained_cfg(cfg.arch)
    if pre is None:
        raise UserError(f"model.arch={cfg.arch!r}: timm has no pretrained config for it; name a pretrained tag "
                        "(timm.list_pretrained()) or set model.weights=null")
    size = int(pre.input_size[-1])
    interpolation = pre.interpolation if pre.interpolation in INTERPOLATIONS else "bilinear"
    return Preprocessing(int(size / pre.crop_pct), size, interpolation)


def load_timm(cfg: TimmConfig, ctx: SourceContext) -> Network:
    timm = _timm()
    description = {"source": "timm", "arch": cfg.arch, "weights": cfg.weights, "timm": timm.__version__}
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        if cfg.weights is None:
            net = timm.create_model(cfg.arch, pretrained=False, num_classes=ctx.num_classes)
            description.update(init_seed=ctx.seed, num_classes=ctx.num_classes)
            return Network(Normalized(net, ctx.mean, ctx.std).eval(), ctx.num_classes, None, None, description)
        overlay = {}
        if cfg.weights != "pretrained":
            path = _file(cfg.weights, "model.weights")
            _refuse_web_page(path, "model.weights")
            overlay = {"file": str(path)}
            description.update(file=str(path), sha256=file_sha256(path))
        try:
            net = timm.create_model(cfg.arch, pretrained=True, pretrained_cfg_overlay=overlay)
        except Exception as ex:  # offline downloads, a file of other keys, ...
            raise UserError(f"model.weights={cfg.weights!r}: timm could not load {cfg.arch}'s weights "
                            f"({type(ex).__name__}: {str(ex).splitlines()[0][:200]}); give a local weights file, or "
                            "run where timm can download them") from ex
    if "sha256" not in description:  # timm's own cache: the weights as loaded identify the network
        description["weights_fingerprint"] = state_dict_fingerprint(net.state_dict())
    pre = net.pretrained_cfg
    return Network(Normalized(net, list(pre["mean"]), list(pre["std"])).eval(), int(net.num_classes), None,
                   timm_preprocessing(cfg), description)


def load_module(cfg: ModuleConfig, ctx: SourceContext) -> Network:
    module_name, _, cls_name = cfg.target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as ex:
        raise UserError(f"model.target={cfg.target!r}: cannot import it ({type(ex).__name__}: {ex}); put its package "
                        "on PYTHONPATH") from ex
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        try:
            net = cls(**dict(cfg.kwargs))
        except TypeError as ex:
            raise UserError(f"model.kwargs={dict(cfg.kwargs)!r}: {cfg.target} does not take them ({ex})") from ex
    if not isinstance(net, nn.Module):
        raise UserError(f"model.target={cfg.target!r}: builds a {type(net).__name__}, not an nn.Module")
    description = {"source": "module", "target": cfg.target, "kwargs": dict(cfg.kwargs), "weights": cfg.weights}
    if cfg.weights is None:
        description["init_seed"] = ctx.seed
    else:
        path = _file(cfg.weights, "model.weights")
        _load_weights(net, _state_dict(path, "model.weights"), path, "model.weights")
        description.update(file=str(path), sha256=file_sha256(path))
    return Network(Normalized(net, ctx.mean, ctx.std).eval(), None, None, None, description)


def load_scripted(cfg: ScriptedConfig, ctx: SourceContext) -> Network:
    path = _file(cfg.path, "model.path")
    _refuse_web_page(path, "model.path")
    try:
        if path.suffix == ".pt2":
            net = _Exported(torch.export.load(str(path)).module())
        else:
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as ex:
        raise UserError(f"model.path={cfg.path!r}: not a TorchScript or torch.export archive ({type(ex).__name__}); "
                        "save it with torch.jit.save or torch.export.save") from ex
    description = {"source": "scripted", "format": "export" if path.suffix == ".pt2" else "torchscript",
                   "file": str(path), "sha256": file_sha256(path)}
    return Network(Normalized(net, ctx.mean, ctx.std), None, None, None, description)


class _Exported(nn.Module):
    """A torch.export program's module: it has no train/eval modes (it runs as it was exported), so switching the
    mode stops here instead of reaching it."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> "_Exported":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


@dataclass(frozen=True)
class SourceContext:
    """What a source reads of the run: the dataset's classes and normalisation, the seed of a random init."""

    num_classes: int
    mean: list[float]
    std: list[float]
    seed: int


@dataclass(frozen=True)
class ModelSource:
    """A model option whose network comes from elsewhere: its schema, its loader, the preprocessing it declares."""

    schema: type[ModelConfig]
    load: Callable[[Any, SourceContext], Network]
    preprocessing: Callable[[Any], Optional[Preprocessing]] = lambda cfg: None


SOURCES: dict[str, ModelSource] = {
    "torchvision": ModelSource(TorchvisionConfig, load_torchvision, torchvision_preprocessing),
    "timm": ModelSource(TimmConfig, load_timm, timm_preprocessing),
    "robustbench": ModelSource(RobustBenchConfig, load_robustbench, robustbench_preprocessing),
    "module": ModelSource(ModuleConfig, load_module),
    "scripted": ModelSource(ScriptedConfig, load_scripted),
}


class SelectLogits(nn.Module):
    """The logits of some of a network's classes, in the order given."""

    def __init__(self, net: nn.Module, indices: list[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).index_select(-1, self.indices)


WORDNET_ID = re.compile(r"n\d{8}")


def _name_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def named(names: Optional[list[str]]) -> bool:
    """Whether class names are words to compare: not absent, not 0..K-1, not WordNet ids."""
    return bool(names) and not all(n == str(k) for k, n in enumerate(names)) and not all(
        WORDNET_ID.fullmatch(n) for n in names)


def select_classes(network: Network, classes: Any, dataset_names: list[str], width: int) -> Network:
    """The network restricted to `classes` (model.classes: indices, or "names" matched to the dataset's), of
    `width` logits in all; the network itself for null."""
    if classes is None:
        return network
    if classes == "names":
        if not named(network.class_names) or not named(dataset_names):
            raise UserError("model.classes=names: needs class names on both sides (the network's and the dataset's "
                            "folders or dataset.classes); give the network's class indices instead")
        keys = {_name_key(n): i for i, n in enumerate(network.class_names)}
        missing = [n for n in dataset_names if _name_key(n) not in keys]
        if missing:
            raise UserError(f"model.classes=names: the network has no class {missing[0]!r} ({len(missing)} of the "
                            f"dataset's {len(dataset_names)} classes unmatched); give class indices instead")
        indices = [keys[_name_key(n)] for n in dataset_names]
    else:
        indices = list(classes)
        if max(indices) >= width:
            fail("model.classes", indices, f"the network has {width} classes (indices 0..{width - 1})")
    names = None if network.class_names is None else [network.class_names[i] for i in indices]
    description = {**network.description, "classes": indices}
    return Network(SelectLogits(network.model, indices), len(indices), names, network.preprocessing, description)


def check_class_names(network: Network, dataset_names: list[str]) -> None:
    """Refuse a network whose class names differ from the dataset's, where both have words for names."""
    if not (named(network.class_names) and named(dataset_names)) or len(network.class_names) != len(dataset_names):
        return
    for k, (ours, theirs) in enumerate(zip(network.class_names, dataset_names)):
        if _name_key(ours) != _name_key(theirs):
            raise UserError(f"model.classes: the network's class {k} is {ours!r}, the dataset's is {theirs!r}; set "
                            "model.classes=names to match them by name, or list the network's class indices")


def describe_network(description: dict[str, Any]) -> str:
    """A short label: source, what it is and its weights (e.g. torchvision:resnet50@ResNet50_Weights.IMAGENET1K_V2)."""
    what = description.get("arch") or description.get("target") or description.get("file")
    weights = description.get("weights")
    return f"{description['source']}:{what}" + (f"@{weights}" if weights else "")


def network_identity(description: dict[str, Any]) -> str:
    """The identity of a network from a source: what it is and the hash of its weights file (or its init seed)."""
    keep = {k: v for k, v in description.items() if k not in ("file", "torchvision")}
    return digest(keep)
