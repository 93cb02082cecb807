"""Model sources (models/sources.py): torchvision classifiers, timm and RobustBench models, your own nn.Module,
TorchScript and torch.export archives, used as they are on image folders of any size; no network and no published
weights needed: random weights saved in the layout the libraries use."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.io import write_jpeg
from torchvision.models import ResNet50_Weights, get_model

from cbuap_runner.data import Preprocessing
from cbuap_runner.errors import UserError
from cbuap_runner.models import sources
from cbuap_runner.models.sources import SourceContext, TorchvisionConfig, hub_file, torchvision_preprocessing
from cbuap_runner.provenance import file_sha256
from helpers import REPO, run_cli

CLASSES = ("cat", "dog", "fox")
CONTEXT = SourceContext(len(CLASSES), [0.5] * 3, [0.25] * 3, seed=0)


def jpeg_folders(root: Path, per_class: int = 8, sizes: tuple[int, int] = (40, 90),
                 classes: tuple[str, ...] = CLASSES) -> Path:
    """train/ and test/ folders of random RGB JPEGs of mixed sizes and aspects, one folder per class."""
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.randint(*sizes), rng.randint(*sizes)
                write_jpeg((torch.rand(3, h, w, generator=g) * 255).to(torch.uint8), str(folder / f"{i}.jpg"))
    return root


def folder_args(root: Path, crop: int = 48) -> list[str]:
    return ["dataset=image_folder", f"dataset.root={root}", f"dataset.num_classes={len(CLASSES)}",
            "dataset.val_size=6", f"dataset.resize={crop + 8}", f"dataset.crop={crop}", "eval.batch_size=16"]


ATTACK = ["task=attack", "attack=sgd_uap", "attack.passes=1", "attack.crafting_images=12", "attack.batch_size=6"]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_summary.json").read_text())


def completed(proc, run_dir: Path) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = summary(run_dir)
    assert record["status"] == "completed"
    return record


# ---------------------------------------------------------------- torchvision


@pytest.mark.e2e
def test_cli_attacks_a_torchvision_resnet18_on_mixed_size_jpegs(tmp_path):
    root = jpeg_folders(tmp_path / "images")
    run_dir = tmp_path / "run"
    record = completed(run_cli([*ATTACK, "model=torchvision", "model.arch=resnet18", "model.weights=null",
                                *folder_args(root)], run_dir), run_dir)
    model = record["provenance"]["model"]
    assert (model["source"], model["arch"], model["weights"], model["num_classes"]) == ("torchvision", "resnet18",
                                                                                       None, 3)
    assert model["identity"].startswith("network:") and model["label"] == "torchvision:resnet18"
    stored = torch.load(run_dir / "perturbation.pt", weights_only=True)
    assert stored["delta"].shape == (3, 48, 48)
    space = stored["space"]  # where the perturbation lives, for whoever applies it elsewhere
    assert (space["channels"], space["channel_order"], space["resolution"], space["value_range"]) == (
        3, "RGB", [48, 48], [0.0, 1.0])
    assert space["added_after"] == {"decode": "resize_crop", "channels": 3, "resize": 56, "crop": 48,
                                    "interpolation": "bilinear"}
    assert space["network"]["arch"] == "resnet18" and space["norm"] == "linf"
    assert {"perturbation.pt", "perturbation.png", "metrics.jsonl", "crafting"} <= {p.name for p in run_dir.iterdir()}
    assert not (tmp_path / "cache" / "models").exists()  # used as it is: nothing trained, nothing cached


def test_preprocessing_comes_from_the_weights_metadata():
    v2 = torchvision_preprocessing(TorchvisionConfig(name="torchvision", arch="resnet50", weights="IMAGENET1K_V2"))
    v1 = torchvision_preprocessing(TorchvisionConfig(name="torchvision", arch="resnet50", weights="IMAGENET1K_V1"))
    assert v2 == Preprocessing(232, 224, "bilinear") and v1 == Preprocessing(256, 224, "bilinear")
    assert torchvision_preprocessing(TorchvisionConfig(name="torchvision", arch="resnet50", weights=None)) is None


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _publish(weights, path: Path) -> None:
    """Make `path`'s file the one the weights enum names: its URL's file name carries the file's own hash prefix
    (random weights cannot carry the published one)."""
    url = f"https://download.pytorch.org/models/resnet50-{file_sha256(path)[:8]}.pth"
    path.rename(hub_file(url))
    object.__setattr__(weights.value, "url", url)  # Weights is frozen; the caller restores the published URL


@pytest.mark.parametrize("name,resize", [("IMAGENET1K_V2", 232), ("IMAGENET1K_V1", 256)])
def test_cached_resnet50_weights_are_used_with_their_hash_and_preprocessing(name, resize, hub):
    weights = ResNet50_Weights[name]
    hub.mkdir(parents=True)
    random_weights = hub / "random.pth"
    torch.manual_seed(0)
    torch.save(get_model("resnet50", weights=None).state_dict(), random_weights)
    original = weights.value.url
    try:
        _publish(weights, random_weights)
        cfg = TorchvisionConfig(name="torchvision", arch="resnet50", weights=name)
        network = sources.load_torchvision(cfg, CONTEXT)
        path = hub_file(weights.url)
        assert network.description["sha256"] == file_sha256(path) and network.description["file"] == str(path)
        assert network.description["weights"] == f"ResNet50_Weights.{name}"
        assert network.preprocessing == Preprocessing(resize, 224, "bilinear") and network.num_classes == 1000
        assert network.class_names[0] == "tench"
        x = torch.rand(2, 3, 224, 224)
        mean, std = torch.tensor(weights.transforms().mean).view(1, 3, 1, 1), torch.tensor(
            weights.transforms().std).view(1, 3, 1, 1)
        inner = get_model("resnet50", weights=None).eval()
        inner.load_state_dict(torch.load(path, weights_only=True))
        assert torch.allclose(network.model(x), inner((x - mean) / std), atol=1e-5)  # normalises inside
    finally:
        object.__setattr__(weights.value, "url", original)


def test_a_cached_file_whose_hash_prefix_does_not_match_is_refused(hub):
    path = hub_file(ResNet50_Weights.IMAGENET1K_V2.url)
    path.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1)}, path)
    cfg = TorchvisionConfig(name="torchvision", arch="resnet50", weights="IMAGENET1K_V2")
    with pytest.raises(UserError, match=r"^model\.weights=IMAGENET1K_V2: .*resnet50-11ad3fa6\.pth has SHA-256 .*not "
                                        r"the file torchvision publishes"):
        sources.load_torchvision(cfg, CONTEXT)


def test_weights_neither_cached_nor_downloadable_name_the_file_and_where_it_goes(hub, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cfg = TorchvisionConfig(name="torchvision", arch="resnet50", weights="IMAGENET1K_V1")
    with pytest.raises(UserError) as info:
        sources.load_torchvision(cfg, CONTEXT)
    message = str(info.value)
    assert "resnet50-0676ba61.pth is not in torch's hub cache" in message and "\n" not in message
    assert f"put the file of {ResNet50_Weights.IMAGENET1K_V1.url} at {hub / 'resnet50-0676ba61.pth'}" in message


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_auxiliary_heads_give_their_main_logits_in_train_mode(arch):
    network = sources.load_torchvision(TorchvisionConfig(name="torchvision", arch=arch, weights=None), CONTEXT)
    network.model.train()
    size = 96 if arch == "googlenet" else 299  # Inception-v3's auxiliary head needs its 299 px
    out = network.model(torch.rand(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("arch,crop", [("googlenet", 64), ("inception_v3", 299)])
def test_googlenet_and_inception_train_one_epoch(arch, crop, tmp_path):
    root = jpeg_folders(tmp_path / "images", per_class=6, sizes=(crop, crop + 40))
    run_dir = tmp_path / "run"
    record = completed(run_cli(["task=train", "training.epochs=1", "training.batch_size=4", "model=torchvision",
                                f"model.arch={arch}", "model.weights=null", *folder_args(root, crop)], run_dir),
                       run_dir)
    assert record["provenance"]["initial_model"]["arch"] == arch and (run_dir / "model.pt").is_file()


# ---------------------------------------------------------------- your own module, archives


class TinyNet(nn.Module):
    """A small network of the kind a researcher brings: a constructor argument and its own initialisation."""

    def __init__(self, num_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


@pytest.mark.e2e
def test_cli_attacks_your_own_module_with_its_weights(tmp_path):
    root = jpeg_folders(tmp_path / "images")
    weights = tmp_path / "tiny.pt"
    torch.manual_seed(1)
    torch.save(TinyNet(width=6).state_dict(), weights)
    run_dir = tmp_path / "run"
    proc = run_cli([*ATTACK, "model=module", "model.target=test_sources.TinyNet", "+model.kwargs.width=6",
                    f"model.weights={weights}", *folder_args(root)], run_dir,
                   env={"PYTHONPATH": str(Path(__file__).parent)})
    model = completed(proc, run_dir)["provenance"]["model"]
    assert (model["source"], model["target"], model["kwargs"]) == ("module", "test_sources.TinyNet", {"width": 6})
    assert model["sha256"] == file_sha256(weights)


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_cli_attacks_a_network_shipped_without_code(fmt, tmp_path):
    root = jpeg_folders(tmp_path / "images")
    net = TinyNet().eval()
    if fmt == "torchscript":
        archive = tmp_path / "net.pt"
        torch.jit.save(torch.jit.script(net), archive)
    else:
        archive = tmp_path / "net.pt2"
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.export.save(torch.export.export(net, (torch.rand(2, 3, 48, 48),), dynamic_shapes=({0: batch},)),
                          archive)
    run_dir = tmp_path / "run"
    model = completed(run_cli([*ATTACK, "model=scripted", f"model.path={archive}", *folder_args(root)], run_dir),
                      run_dir)["provenance"]["model"]
    assert (model["format"], model["sha256"]) == (fmt, file_sha256(archive))


# ---------------------------------------------------------------- refusals: one line each


def _refused(proc) -> str:
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.mark.e2e
def test_refusals_name_the_key(tmp_path):
    root = jpeg_folders(tmp_path / "images", per_class=4)
    page = tmp_path / "page.pt"
    page.write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    cases = {
        "corrupt": (["model=torchvision", "model.arch=resnet18", f"model.weights={corrupt}"],
                    f"error: model.weights={str(corrupt)!r}: "),
        "unknown_arch": (["model=torchvision", "model.arch=resnet_nope"],
                                   "error: model.arch='resnet_nope': torchvision has no classification model"),
        "web_page": (["model=torchvision", "model.arch=resnet18", f"model.weights={page}"],
                     f"error: model.weights='{page}': holds a web page or text, not weights"),
        "classes": (["model=module", "model.target=test_sources.TinyNet", "+model.kwargs.num_classes=5"],
                    None),
        "not_a_module": (["model=module", "model.target=collections.OrderedDict"],
                         "error: model.target='collections.OrderedDict': builds a OrderedDict, not an nn.Module"),
    }
    for name, (args, expected) in cases.items():
        proc = run_cli([*ATTACK, *args, *folder_args(root)], tmp_path / name,
                       env={"PYTHONPATH": str(Path(__file__).parent)})
        line = _refused(proc)
        if expected is not None:
            assert line.startswith(expected), (name, line)
        else:  # a module's head is read off its output: 5 classes against a 3-class dataset
            assert "5 classes" in line and "3" in line, line


def test_a_pretrained_head_of_other_classes_is_refused(tmp_path):
    """A 1,000-class torchvision network against a 3-class dataset (the source's classes are checked first)."""
    from cbuap_runner.networks import check_classes

    with pytest.raises(UserError, match=r"^model\.name=torchvision: the network has 1000 classes, dataset=image_folder "
                                        r"has 3"):
        check_classes("torchvision", "image_folder", 1000, 3)


# ---------------------------------------------------------------- timm (the optional extra)


def test_timm_weights_from_a_local_file_with_timms_preprocessing(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    path = tmp_path / "resnet18_a1.pth"
    torch.save(timm.create_model("resnet18.a1_in1k", pretrained=False).state_dict(), path)
    cfg = sources.TimmConfig(name="timm", arch="resnet18.a1_in1k", weights=str(path))
    network = sources.load_timm(cfg, CONTEXT)
    pre = timm.get_pretrained_cfg("resnet18.a1_in1k")
    assert network.preprocessing == Preprocessing(int(224 / pre.crop_pct), 224, pre.interpolation)
    assert network.description["sha256"] == file_sha256(path) and network.num_classes == 1000
    stored = torch.load(path, weights_only=True)
    assert all(torch.equal(v, stored[k]) for k, v in network.model.net.state_dict().items())


@pytest.mark.e2e
def test_cli_attacks_a_timm_model(tmp_path):
    pytest.importorskip("timm")
    root = jpeg_folders(tmp_path / "images")
    run_dir = tmp_path / "run"
    model = completed(run_cli([*ATTACK, "model=timm", "model.arch=resnet18", "model.weights=null",
                               *folder_args(root)], run_dir), run_dir)["provenance"]["model"]
    assert (model["source"], model["arch"], model["num_classes"]) == ("timm", "resnet18", 3)


# ---------------------------------------------------------------- classes of the network and of the dataset


def _named_network(names: list[str]) -> sources.Network:
    net = torch.nn.Linear(4, len(names))
    return sources.Network(net, len(names), names, None, {"source": "test"})


def test_model_classes_select_logits_by_index_or_name():
    network = _named_network(["tench", "goldfish", "great white shark", "tiger_shark"])
    x = torch.rand(3, 4)
    full = network.model(x)
    by_index = sources.select_classes(network, [3, 0], ["tiger shark", "tench"], 4)
    assert torch.equal(by_index.model(x), full[:, [3, 0]]) and by_index.class_names == ["tiger_shark", "tench"]
    assert by_index.description["classes"] == [3, 0] and by_index.num_classes == 2
    by_name = sources.select_classes(network, "names", ["Tiger Shark", "goldfish"], 4)
    assert by_name.description["classes"] == [3, 1]
    with pytest.raises(UserError, match=r"^model\.classes=names: the network has no class 'axolotl'"):
        sources.select_classes(network, "names", ["axolotl"], 4)
    with pytest.raises(UserError, match=r"^model\.classes=\[4\]: the network has 4 classes"):
        sources.select_classes(network, [4], ["x"], 4)


def test_class_names_that_disagree_are_refused_and_wordnet_ids_are_not_compared():
    network = _named_network(["cat", "dog"])
    sources.check_class_names(network, ["cat", "dog"])
    sources.check_class_names(network, ["0", "1"])  # unnamed classes
    sources.check_class_names(network, ["n02123045", "n02084071"])  # WordNet ids
    with pytest.raises(UserError, match=r"^model\.classes: the network's class 0 is 'cat', the dataset's is 'dog'"):
        sources.check_class_names(network, ["dog", "cat"])


@pytest.mark.e2e
def test_cli_attacks_a_subset_of_a_networks_classes(tmp_path):
    """A 5-class network, the dataset's 3 classes among them (model.classes)."""
    root = jpeg_folders(tmp_path / "images")
    run_dir = tmp_path / "run"
    proc = run_cli([*ATTACK, "model=module", "model.target=test_sources.TinyNet", "+model.kwargs.num_classes=5",
                    "model.classes=[4,0,2]", *folder_args(root)], run_dir, env={"PYTHONPATH": str(Path(__file__).parent)})
    assert completed(proc, run_dir)["provenance"]["model"]["classes"] == [4, 0, 2]


# ---------------------------------------------------------------- the ImageNet table, end to end on generated data


@pytest.mark.e2e
@pytest.mark.slow
def test_the_imagenet_tables_run_end_to_end(tmp_path):
    """table=uap_imagenet on a generated 1,000-class folder (one image per class and split, random weights, 32-px
    crops, one pass over 20 crafting images, 100 test images): every job completes and the generated section sets
    the published figures beside the table's; then table=transfer_imagenet evaluates each DeepFool UAP on every
    network, and --kind transfer draws the 5x5 matrix whose diagonal is each white-box rate."""
    from cbuap_runner.report.document import write_document

    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    root = tmp_path / "imagenet"
    for split in ("train", "test"):
        for k in range(1000):
            folder = root / split / f"n{k:08d}"
            folder.mkdir(parents=True)
            h, w = rng.randint(64, 90), rng.randint(64, 90)
            write_jpeg((torch.rand(3, h, w, generator=g) * 255).to(torch.uint8), str(folder / "0.jpg"))
    sweep = tmp_path / "sweep"
    small = ["progress=off", "device=cpu", f"cache_dir={tmp_path / 'cache'}", "model.weights=null", "dataset.resize=36",
             "dataset.crop=32", "dataset.val_per_class=null", "dataset.val_size=100", "eval.num_images=100",
             "eval.batch_size=100"]
    env = {**os.environ, "IMAGENET_ROOT": str(root), "UAP_SWEEP": str(sweep), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "cbuap_runner", "table=uap_imagenet", f"hydra.sweep.dir={sweep}", *small,
         "attack.crafting_per_class=null", "attack.crafting_images=20", "attack.passes=1", "attack.batch_size=10"],
        cwd=REPO, capture_output=True, text=True, timeout=3000, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = sorted(sweep.glob("*/run_summary.json"))
    assert len(records) == 30 and all(json.loads(p.read_text())["status"] == "completed" for p in records)
    manifest = json.loads((REPO / "docs/results/uap_imagenet/document.json").read_text())
    manifest["sections"][0]["records"] = [str(sweep)]
    (tmp_path / "document.json").write_text(json.dumps(manifest))
    text = write_document(tmp_path / "document.json", figures=False).read_text()
    assert "Published figures beside these (fooling_rate; Moosavi-Dezfooli et al., CVPR 2017, Table 1" in text
    for label in ("VGG-16", "VGG-19", "GoogLeNet", "ResNet-152"):
        assert re.search(rf"\| {label}, DeepFool UAP, L∞ 10 \| 0\.\d{{3}} \| \d\.\d{{3}} \(1\) \| [+-]\d\.\d{{3}} \|", text)

    from cbuap_runner.report.tables import write_tables

    transfer = tmp_path / "transfer"
    proc = subprocess.run([sys.executable, "-m", "cbuap_runner", "table=transfer_imagenet",
                           f"hydra.sweep.dir={transfer}", *small], cwd=REPO, capture_output=True, text=True,
                          timeout=3000, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    write_tables(transfer, kind="transfer", figures=True)
    matrix = (transfer / "tables" / "transfer.csv").read_text().splitlines()[1:]
    assert len(matrix) == 25 and (transfer / "tables" / "transfer.png").is_file()
    for arch in ("vgg16", "vgg19", "googlenet", "resnet152", "resnet50"):
        white_box = json.loads((sweep / f"{arch}_uap_linf" / "run_summary.json").read_text())["metrics"]
        label = f"torchvision:{arch}"
        (cell,) = [line for line in matrix if f",{label},{label}," in line]
        assert float(cell.split(",")[3]) == white_box["fooling_rate"]
# ---------------------------------------------------------------- RobustBench (the optional extra)

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ROBUSTBENCH_STATS = {  # the normalisation each zoo network carries inside itself (robustbench/model_zoo/cifar10.py)
    "Wong2020Fast": ([0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]),
    "Engstrom2019Robustness": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
}


def _zoo_entry(arch: str, dataset: str = "cifar10", threat: str = "Linf") -> dict:
    from cbuap_runner.models.robustbench_source import _robustbench

    try:
        _robustbench()  # robustbench made importable (pyautoattack standing in for autoattack)
    except UserError:
        pass
    pytest.importorskip("robustbench.utils")  # the robustbench extra is not installed: skipped
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][arch]


def robustbench_weights(model_dir: Path, arch: str, seed: int = 0) -> tuple[nn.Module, Path]:
    """The zoo's own network for `arch` (CIFAR-10, Linf), built as load_model builds it, its random weights saved
    where load_model looks, without the normalisation buffers (as the published files are): Wong2020Fast and
    Standard as a plain state dict, Engstrom2019Robustness and Carmon2019Unlabeled under `state_dict` with
    DataParallel's `module.` prefix."""
    entry = _zoo_entry(arch)
    torch.manual_seed(seed)
    net = entry["model"]().eval()
    state = {k: v for k, v in net.state_dict().items() if k not in ("mu", "sigma")}
    if arch in ("Engstrom2019Robustness", "Carmon2019Unlabeled"):
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = model_dir / "cifar10" / "Linf" / f"{arch}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return net, path


def _robustbench_cfg(model_dir: Path, arch: str, **kw):
    from cbuap_runner.models.robustbench_source import RobustBenchConfig

    return RobustBenchConfig(name="robustbench", arch=arch, dir=str(model_dir), **kw)


@pytest.mark.parametrize("arch", ["Wong2020Fast", "Engstrom2019Robustness"])
def test_robustbench_networks_load_from_robustbenchs_directory_and_normalise_inside(arch, tmp_path):
    net, path = robustbench_weights(tmp_path / "models", arch)
    network = sources.load_robustbench(_robustbench_cfg(tmp_path / "models", arch), CONTEXT)
    d = network.description
    assert (d["source"], d["arch"], d["dataset"], d["threat"], d["weights"]) == ("robustbench", arch, "cifar10", "Linf",
                                                                                "cifar10/Linf")
    assert (d["file"], d["sha256"]) == (str(path), file_sha256(path))
    assert network.num_classes == 10 and network.preprocessing is None and not network.model.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in network.model.net.state_dict().items())
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ROBUSTBENCH_STATS[arch])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # [0,1] in; the zoo network's own buffers normalise, nothing is added in front of them
        bare = type(net).__mro__[1].forward(net, (x - mean) / std)
        assert torch.allclose(network.model(x), bare, atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("arch", ["Wong2020Fast", "Engstrom2019Robustness"])
def test_cli_attacks_a_robustbench_model_on_cifar_sized_jpegs(arch, tmp_path):
    _, path = robustbench_weights(tmp_path / "models", arch)
    root = jpeg_folders(tmp_path / "images", per_class=4, sizes=(32, 32), classes=CIFAR10)
    run_dir = tmp_path / "run"
    proc = run_cli([*ATTACK, "model=robustbench", f"model.arch={arch}", "model.dataset=cifar10", "model.threat=Linf",
                    f"model.dir={tmp_path / 'models'}", "dataset=image_folder", f"dataset.root={root}",
                    "dataset.num_classes=10", "dataset.image_size=32", "dataset.val_size=10", "eval.batch_size=16"],
                   run_dir)
    model = completed(proc, run_dir)["provenance"]["model"]
    assert (model["source"], model["arch"], model["dataset"], model["threat"]) == ("robustbench", arch, "cifar10",
                                                                                  "Linf")
    assert (model["file"], model["sha256"]) == (str(path), file_sha256(path))
    assert model["label"] == f"robustbench:{arch}@cifar10/Linf" and model["identity"].startswith("network:")
    assert torch.load(run_dir / "perturbation.pt", weights_only=True)["delta"].shape == (3, 32, 32)
    assert {"perturbation.pt", "perturbation.png", "metrics.jsonl", "crafting"} <= {p.name for p in run_dir.iterdir()}
    assert not (tmp_path / "cache" / "models").exists()  # used as it is: nothing trained, nothing cached


@pytest.mark.e2e
def test_robustbench_refusals_are_one_line(tmp_path):
    _zoo_entry("Wong2020Fast")
    root = jpeg_folders(tmp_path / "images", per_class=2, sizes=(32, 32), classes=CIFAR10)
    page = tmp_path / "models" / "cifar10" / "Linf" / "Wong2020Fast.pt"
    page.parent.mkdir(parents=True)
    page.write_text("<!DOCTYPE html><html><body>Google Drive - Quota exceeded</body></html>")
    data = ["dataset=image_folder", f"dataset.root={root}", "dataset.num_classes=10", "dataset.image_size=32",
            "dataset.val_size=10"]
    cases = {
        "web_page": ("Wong2020Fast", f"error: model.dir='{page}': holds a web page or text, not weights"),
        "unknown_arch": ("Wong2020Slow", "error: model.arch='Wong2020Slow': RobustBench's cifar10/Linf zoo has no model "
                                         "of that name; e.g. Wong2020Fast"),
    }
    for name, (arch, expected) in cases.items():
        line = _refused(run_cli([*ATTACK, "model=robustbench", f"model.arch={arch}", f"model.dir={tmp_path / 'models'}",
                                 *data], tmp_path / name))
        assert line.startswith(expected), (name, line)


def _offline(monkeypatch) -> None:
    import robustbench.utils

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", offline)


@pytest.mark.parametrize("arch,files", [("Wong2020Fast", ["Wong2020Fast.pt"]),
                                        ("Chen2020Adversarial", [f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)])])
def test_robustbench_weights_neither_there_nor_downloadable_name_the_file_and_where_it_goes(arch, files, tmp_path,
                                                                                           monkeypatch):
    entry = _zoo_entry(arch)
    _offline(monkeypatch)
    with pytest.raises(UserError) as info:
        sources.load_robustbench(_robustbench_cfg(tmp_path / "models", arch), CONTEXT)
    message, where = str(info.value), tmp_path / "models" / "cifar10" / "Linf"
    drive = entry["gdrive_id"] if isinstance(entry["gdrive_id"], str) else entry["gdrive_id"][0]
    assert message.startswith(f"model.dir='{tmp_path / 'models'}': {files[0]} is not in RobustBench's model directory "
                              "and could not be downloaded (ConnectionError)") and "\n" not in message
    assert f"put RobustBench's file of {arch} (Google Drive id {drive}) at {where / files[0]}" in message
    assert ("2 more of the ensemble" in message) == (len(files) == 3)


def test_robustbench_weights_that_do_not_fit_are_refused(tmp_path):
    _, path = robustbench_weights(tmp_path / "models", "Wong2020Fast")
    torch.save({"fc.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match=r"^model\.arch='Wong2020Fast': RobustBench could not load it from .*"
                                        r"Wong2020Fast\.pt \(RuntimeError: Error\(s\) in loading state_dict"):
        sources.load_robustbench(_robustbench_cfg(tmp_path / "models", "Wong2020Fast"), CONTEXT)


def test_robustbench_threats_the_zoo_lacks_for_a_dataset_are_refused(tmp_path):
    _zoo_entry("Wong2020Fast")
    cfg = _robustbench_cfg(tmp_path, "Wong2020Fast", dataset="cifar100", threat="L2")
    with pytest.raises(UserError, match=r"^model\.threat='L2': RobustBench's zoo has no cifar100 models for it; it "
                                        r"has Linf, corruptions$"):
        sources.load_robustbench(cfg, CONTEXT)


def test_robustbench_imagenet_preprocessing_is_robustbenchs_own(tmp_path):
    _zoo_entry("Salman2020Do_R18", "imagenet")
    from robustbench.data import PREPROCESSINGS

    assert [type(t).__name__ for t in PREPROCESSINGS["Res256Crop224"].transforms] == ["Resize", "CenterCrop",
                                                                                       "ToTensor"]
    cases = {"Salman2020Do_R18": Preprocessing(256, 224, "bilinear"),  # Res256Crop224
             "Singh2023Revisiting_ConvNeXt-T-ConvStem": Preprocessing(256, 224, "bicubic")}  # BicubicRes256Crop224
    for arch, expected in cases.items():
        cfg = _robustbench_cfg(tmp_path, arch, dataset="imagenet")
        assert sources.robustbench_preprocessing(cfg) == expected, arch


def test_robustbench_keys_are_checked_without_the_package():
    """Composing a config needs no robustbench (a sweep may be launched from where it is not installed); the
    dataset and threat are checked there, the arch when the zoo is read; CIFAR declares no preprocessing."""
    with pytest.raises(UserError, match=r"^model\.threat='L3': must be one of Linf, L2, corruptions$"):
        _robustbench_cfg(Path("models"), "Wong2020Fast", threat="L3").check()
    with pytest.raises(UserError, match=r"^model\.dataset='mnist': must be one of cifar10, cifar100, imagenet$"):
        _robustbench_cfg(Path("models"), "Wong2020Fast", dataset="mnist").check()
    assert sources.robustbench_preprocessing(_robustbench_cfg(Path("models"), "Wong2020Fast")) is None


def test_robustbench_absent_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)  # as where the extra is not installed
    with pytest.raises(UserError, match=r"^model=robustbench: robustbench is not installed; pip install "
                                        r"'cbuap-runner\[robustbench\]'"):
        sources.load_robustbench(_robustbench_cfg(Path("models"), "Wong2020Fast"), CONTEXT)


@pytest.mark.e2e
@pytest.mark.slow
def test_the_robustbench_cifar10_table_runs_end_to_end(tmp_path):
    """table=robustbench_cifar10 on a generated 10-class 32-px JPEG folder, with random weights for its four networks
    in RobustBench's layout (one seed, one pass over 4 crafting images, 10 validation and 20 test images): every job
    completes, and the generated section sets each network's published clean accuracy beside its rows."""
    from cbuap_runner.report.document import write_document

    models = tmp_path / "models"
    manifest = json.loads((REPO / "docs/results/robustbench_cifar10/document.json").read_text())
    anchors = manifest["sections"][0]["anchors"]["values"]
    for anchor in anchors:
        robustbench_weights(models, anchor["where"]["model.arch"])
    root = jpeg_folders(tmp_path / "cifar10", per_class=4, sizes=(32, 32), classes=CIFAR10)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "CIFAR10_ROOT": str(root), "ROBUSTBENCH_MODELS": str(models), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "cbuap_runner", "table=robustbench_cifar10", f"hydra.sweep.dir={sweep}", "progress=off",
         "device=cpu", f"cache_dir={tmp_path / 'cache'}", "seed=0", "dataset.val_size=10", "eval.batch_size=20",
         "attack.crafting_images=4", "attack.passes=1", "attack.batch_size=4"],
        cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run_summary.json"))]
    assert len(records) == 4 * 4 * 2 and all(r["status"] == "completed" for r in records)
    assert {r["provenance"]["model"]["file"] for r in records} == {
        str(models / "cifar10" / "Linf" / f"{a['where']['model.arch']}.pt") for a in anchors}
    manifest["sections"][0]["records"] = [str(sweep)]
    (tmp_path / "document.json").write_text(json.dumps(manifest))
    text = write_document(tmp_path / "document.json", figures=False).read_text()
    assert "Published figures beside these (clean_acc; RobustBench's CIFAR-10 L∞ leaderboard" in text
    for anchor in anchors:  # each network's 8 rows (4 attacks x 2 eps) share its clean accuracy
        label = re.escape(anchor["label"])
        assert re.search(rf"\| {label} \| {anchor['value']:.3f} \| \d\.\d{{3}} ± 0\.000 \(8\) \| [+-]\d\.\d{{3}} \|",
                         text), anchor["label"]
