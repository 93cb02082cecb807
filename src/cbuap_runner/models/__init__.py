"""Model registry: the architectures the tool trains (`MODELS`) and the sources of networks it uses as they are
(`sources.SOURCES`); every model takes [0,1] images and normalises inside itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import UserError
from ..io import safe_torch_load, torch_save
from ..schema import ModelConfig
from .resnet import ResNet18
from .resnet_cifar import ResNet20
from .small_cnn import SmallCNN
from .vgg import VGG16
from .wrn import WideResNet

log = logging.getLogger(__name__)

Builder = Callable[[int, int, int], nn.Module]  # (num_classes, channels, image_size) -> network
MODELS: dict[str, Builder] = {
    "small_cnn": lambda k, c, s: SmallCNN(k, c, s),
    "resnet20": lambda k, c, s: ResNet20(k, c),
    "resnet18": lambda k, c, s: ResNet18(k, c),
    "preact_resnet18": lambda k, c, s: ResNet18(k, c, preact=True),
    "wrn28_10": lambda k, c, s: WideResNet(k, c, 28, 10),
    "vgg16": lambda k, c, s: VGG16(k, c),
}


@dataclass(frozen=True)
class Architecture:
    """A `model=` option the tool builds and trains: an entry of MODELS, with the shared model keys."""

    schema: type[ModelConfig] = ModelConfig


def model_options() -> dict[str, Any]:
    """Every `model=` option and its entry (an Architecture, or a sources.ModelSource with its own schema)."""
    from .sources import SOURCES

    return {**{name: Architecture() for name in MODELS}, **SOURCES}


class Normalized(nn.Module):
    """(x - mean) / std in front of a network, so that callers work in [0,1] pixel space; an output with auxiliary
    heads (torchvision's GoogLeNet and Inception-v3 in train mode) gives its main logits."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x - self.mean) / self.std)
        return out if isinstance(out, torch.Tensor) else getattr(out, "logits", out)


def build_model(name: str, num_classes: int, input_shape: tuple[int, int, int],
                mean: Optional[list[float]] = None, std: Optional[list[float]] = None) -> Normalized:
    """A fresh network of architecture `name` wrapped with its input normalisation."""
    if name not in MODELS:
        raise UserError(f"model.name={name!r}: unknown model; choose one of {', '.join(MODELS)}")
    channels, size, _ = input_shape
    net = MODELS[name](num_classes, channels, size)
    return Normalized(net, mean or [0.0] * channels, std or [1.0] * channels)


def save_model(path: str, model: nn.Module, model_cfg: dict, dataset: str, num_classes: int,
               input_shape: tuple[int, int, int], metrics: Optional[dict] = None,
               provenance: Optional[dict] = None) -> None:
    """Write the model.pt contract: weights plus what is needed to rebuild the network, and what trained it
    (`provenance`: the weights key, its digest and identity, the data fingerprint, the code version)."""
    torch_save({"state_dict": saved_weights(model), "model": dict(model_cfg), "dataset": dataset, "num_classes": int(num_classes),
                "input_shape": [int(v) for v in input_shape], "metrics": dict(metrics or {}),
                "provenance": dict(provenance or {})}, path)


def saved_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a model file holds: of the network inside a DDP or torch.compile wrapper, on the CPU and
    contiguous (the weights, not the memory format the run executed in)."""
    net = getattr(model, "module", model)  # unwrap DDP
    net = getattr(net, "_orig_mod", net)  # unwrap torch.compile
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def prepare(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """The model in the memory format and execution mode of `model.*`: channels_last (its weights, and each image
    batch it is given), and torch.compile of its forward in place (nn.Module.compile, so the state_dict keys stay
    those of the eager model). Neither changes what the model computes beyond floating-point rounding."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_to_channels_last)
    if compile:
        model.compile()
    return model


def _to_channels_last(_module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: 4-D image batches in channels_last, other arguments as given."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4 else a
                 for a in args)


def read_model_file(path: str, key: str = "model.checkpoint") -> dict[str, Any]:
    """Load and check a model.pt; a perturbation file or a foreign file is refused with a clear line."""
    blob = safe_torch_load(path, key)
    if isinstance(blob, dict) and "delta" in blob and "state_dict" not in blob:
        raise UserError(f"{key}={path!r}: this is a perturbation file, not a model; pass it as perturbation=<path>")
    required = ("state_dict", "model", "num_classes", "input_shape")
    if not isinstance(blob, dict) or any(k not in blob for k in required):
        raise UserError(f"{key}={path!r}: not a cbuap-runner model file (needs {', '.join(required)}); give a model.pt "
                        "written by task=train")
    return blob


def load_model(path: str, device: str | torch.device = "cpu", key: str = "model.checkpoint") -> Normalized:
    """Rebuild the network stored in `path` and return it in eval mode on `device`."""
    blob = read_model_file(path, key)
    name = blob["model"].get("name") if isinstance(blob["model"], dict) else None
    if name not in MODELS:  # the stored config is data: only its name is read, and only a registered one is built
        raise UserError(f"{key}={path!r}: holds an unknown architecture {name!r}; give a model.pt this tool wrote")
    channels = int(blob["input_shape"][0])
    model = build_model(name, int(blob["num_classes"]), tuple(blob["input_shape"]), [0.0] * channels, [1.0] * channels)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as ex:
        raise UserError(f"{key}={path!r}: weights do not fit model {name} ({str(ex).splitlines()[0]})") from ex
    return model.to(device).eval()
