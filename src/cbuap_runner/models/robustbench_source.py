"""`model=robustbench` (the `robustbench` extra): a network of RobustBench's model zoo by its zoo name, loaded
through `robustbench.utils.load_model(model_name, model_dir, dataset, threat_model)`.

- `model.arch` a zoo name (`Wong2020Fast`, `Engstrom2019Robustness`, ...), `model.dataset` cifar10, cifar100 or
  imagenet, `model.threat` Linf, L2 or corruptions: together they name one entry of the zoo
  (`robustbench.model_zoo.model_dicts[dataset][threat][arch]`).
- The weights file is where RobustBench keeps it, `<model.dir>/<dataset>/<threat>/<arch>.pt` (an ensemble's
  members: `<arch>.pt_m0.pt`, `<arch>.pt_m1.pt`, ...); RobustBench downloads an absent file where a network exists.
  Offline and absent: one line naming the file and where to put it. A web page saved under the file's name (a
  Google Drive quota or sign-in page) is refused by its first bytes. The file and its SHA-256 are recorded.
  Entries whose weights RobustBench takes from elsewhere (timm's hub, torchvision's `Standard_R50`) are loaded as
  RobustBench loads them and recorded by the fingerprint of the weights as loaded.
- The zoo's networks take [0,1] images and normalise inside themselves (dataset.mean and std are not used); their
  classes are the dataset's (10, 100, 1000). Preprocessing: none for CIFAR (32 px images as they are); for
  ImageNet what RobustBench's own evaluation uses for that entry (`robustbench.data.get_preprocessing`:
  Res256Crop224, BicubicRes256Crop224, Crop288, timm's config for the entries timm hosts). Res224, a squash to
  224x224, is read as a resize of the shorter side to 224 and a centre crop: the same on square images.

Importing robustbench 1.1.1 needs `pkg_resources` (setuptools < 81, pinned by the extra) and a module named
`autoattack`, which its `pyautoattack` dependency installs as `pyautoattack`: where no `autoattack` is installed,
`pyautoattack` is registered under that name before robustbench is imported.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import MISSING

from ..data.folder import Preprocessing
from ..errors import UserError
from ..provenance import file_sha256, state_dict_fingerprint
from ..schema import SourceConfig, one_of

if TYPE_CHECKING:
    from .sources import Network, SourceContext

DATASETS = ("cifar10", "cifar100", "imagenet")
THREATS = ("Linf", "L2", "corruptions")
INSTALL = "pip install 'cbuap-runner[robustbench]' (in an environment of its own: it pins timm==1.0.9)"


@dataclass
class RobustBenchConfig(SourceConfig):
    """A network of RobustBench's model zoo (the `robustbench` extra)."""

    arch: str = MISSING  # a zoo name, e.g. Wong2020Fast (RobustBench's leaderboards list them)
    dataset: str = "cifar10"  # cifar10 | cifar100 | imagenet: the zoo's dataset (its classes)
    threat: str = "Linf"  # Linf | L2 | corruptions: the zoo's threat model
    dir: str = "models"  # RobustBench's model_dir: the weights are at <dir>/<dataset>/<threat>/<arch>.pt

    def check(self) -> None:  # the arch is looked up in the zoo when loading: composing needs no robustbench
        super().check()
        one_of("model.dataset", self.dataset, DATASETS)
        one_of("model.threat", self.threat, THREATS)


def _robustbench() -> ModuleType:
    """robustbench.utils, imported (with `pyautoattack` standing in for `autoattack` where that is absent)."""
    if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is None:
        try:
            import pyautoattack
            import pyautoattack.state
        except ImportError:
            pass
        else:
            sys.modules["autoattack"] = pyautoattack
            sys.modules["autoattack.state"] = pyautoattack.state
    try:
        with warnings.catch_warnings():  # pkg_resources' and timm's deprecation notices, raised on import
            warnings.simplefilter("ignore")
            return importlib.import_module("robustbench.utils")
    except ModuleNotFoundError as ex:
        missing = (ex.name or "").split(".")[0]
        if missing == "robustbench":
            raise UserError(f"model=robustbench: robustbench is not installed; {INSTALL}") from None
        if missing == "pkg_resources":
            raise UserError("model=robustbench: robustbench needs pkg_resources, which setuptools 81 removed; "
                            "pip install 'setuptools<81'") from None
        raise UserError(f"model=robustbench: robustbench cannot be imported: it needs {missing!r}; {INSTALL}") from None


def _zoo(cfg: RobustBenchConfig) -> dict[str, Any]:
    """The zoo's entry for cfg (its constructor, Google Drive ids, preprocessing), refused with one line if none."""
    _robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    threats = model_dicts[BenchmarkDataset(cfg.dataset)]
    if ThreatModel(cfg.threat) not in threats:
        raise UserError(f"model.threat={cfg.threat!r}: RobustBench's zoo has no {cfg.dataset} models for it; it has "
                        f"{', '.join(t.value for t in threats)}")
    models = threats[ThreatModel(cfg.threat)]
    if cfg.arch not in models:
        close = difflib.get_close_matches(cfg.arch, list(models), n=5, cutoff=0.5) or list(models)[:5]
        raise UserError(f"model.arch={cfg.arch!r}: RobustBench's {cfg.dataset}/{cfg.threat} zoo has no model of that "
                        f"name; e.g. {', '.join(close)}")
    return models[cfg.arch]


def _hosted_elsewhere(cfg: RobustBenchConfig, entry: dict[str, Any]) -> bool:
    """Whether load_model takes the weights from timm's hub or torchvision rather than a file in model_dir."""
    import timm

    hub_name = f"{cfg.arch.lower().replace('-', '_')}_{cfg.dataset}_{cfg.threat.lower()}"
    return timm.is_model(hub_name) or (cfg.dataset == "imagenet" and "Standard" in cfg.arch
                                       and not isinstance(entry["gdrive_id"], list))


def weight_files(cfg: RobustBenchConfig, entry: dict[str, Any]) -> list[Path]:
    """Where RobustBench keeps the entry's weights: <dir>/<dataset>/<threat>/<arch>.pt, or one file per member of
    an ensemble."""
    path = Path(cfg.dir).expanduser().absolute() / cfg.dataset / cfg.threat / f"{cfg.arch}.pt"
    ids = entry["gdrive_id"]
    return [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]


def _refuse_web_pages(files: list[Path]) -> None:
    from .sources import _refuse_web_page

    for path in files:
        if path.is_file():
            _refuse_web_page(path, "model.dir")


def _drive_ids(entry: dict[str, Any]) -> list[str]:
    ids = entry["gdrive_id"]
    return list(ids) if isinstance(ids, list) else [ids]


def robustbench_preprocessing(cfg: RobustBenchConfig) -> Optional[Preprocessing]:
    """None for CIFAR (32 px images as they are); for ImageNet, RobustBench's eval preprocessing of the entry."""
    if cfg.dataset != "imagenet":
        return None
    _zoo(cfg)
    from robustbench.data import get_preprocessing
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from torchvision import transforms

    resize, crop, interpolation = None, None, "bilinear"
    for step in get_preprocessing(BenchmarkDataset(cfg.dataset), ThreatModel(cfg.threat), cfg.arch, None).transforms:
        if isinstance(step, transforms.Resize):
            resize = int(step.size if isinstance(step.size, int) else min(step.size))
            interpolation = step.interpolation.value
        elif isinstance(step, transforms.CenterCrop):
            crop = int(step.size[0])
    if resize is None and crop is None:
        return None
    return Preprocessing(resize, crop if crop is not None else resize,
                         interpolation if interpolation in ("nearest", "bilinear", "bicubic") else "bilinear")


def load_robustbench(cfg: RobustBenchConfig, ctx: SourceContext) -> Network:
    from . import Normalized
    from .sources import Network

    utils = _robustbench()
    entry = _zoo(cfg)
    description: dict[str, Any] = {"source": "robustbench", "arch": cfg.arch, "dataset": cfg.dataset,
                                   "threat": cfg.threat, "weights": f"{cfg.dataset}/{cfg.threat}",
                                   "robustbench": version("robustbench")}
    files = [] if _hosted_elsewhere(cfg, entry) else weight_files(cfg, entry)
    _refuse_web_pages(files)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = utils.load_model(cfg.arch, model_dir=str(Path(cfg.dir).expanduser().absolute()),
                                   dataset=cfg.dataset, threat_model=cfg.threat)
    except Exception as ex:  # offline downloads, files of other keys, ...
        _refuse_web_pages(files)  # a download that saved a page
        missing = [(path, drive) for path, drive in zip(files, _drive_ids(entry)) if not path.is_file()]
        if missing:
            path, drive = missing[0]
            more = f" (and {len(missing) - 1} more of the ensemble beside it)" if len(missing) > 1 else ""
            raise UserError(f"model.dir={cfg.dir!r}: {path.name} is not in RobustBench's model directory and could not "
                            f"be downloaded ({type(ex).__name__}); put RobustBench's file of {cfg.arch} (Google "
                            f"Drive id {drive}) at {path}{more}") from ex
        where = f"from {files[0]}" if files else "from where RobustBench takes its weights"
        lines = [line.strip() for line in str(ex).splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:200]  # load_state_dict's first line names the network, its second the keys
        raise UserError(f"model.arch={cfg.arch!r}: RobustBench could not load it {where} ({type(ex).__name__}: "
                        f"{detail})") from ex
    if len(files) == 1:
        description.update(file=str(files[0]), sha256=file_sha256(files[0]))
    elif files:
        description.update(file=[str(p) for p in files], sha256=[file_sha256(p) for p in files])
    else:
        description["weights_fingerprint"] = state_dict_fingerprint(net.state_dict())
    num_classes = int(utils.DATASET_CLASSES[utils.BenchmarkDataset(cfg.dataset)])
    # the zoo's networks normalise inside themselves: [0,1] images go in as they are
    return Network(Normalized(net, [0.0] * 3, [1.0] * 3).eval(), num_classes, None, robustbench_preprocessing(cfg),
                   description)
