"""Model sources (models/sources.py): torchvision classifiers, your own nn.Module, TorchScript and torch.export
archives, used as they are on image folders of any size; no network and no published weights needed: random
weights saved in the layout the libraries use."""

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


def jpeg_folders(root: Path, per_class: int = 8, sizes: tuple[int, int] = (40, 90)) -> Path:
    """train/ and test/ folders of random RGB JPEGs of mixed sizes and aspects, one folder per class."""
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for name in CLASSES:
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
    assert torch.load(run_dir / "perturbation.pt", weights_only=True)["delta"].shape == (3, 48, 48)
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
    from cbuap_runner.tasks import check_classes

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
def test_the_imagenet_table_runs_end_to_end_and_shows_its_anchors(tmp_path):
    """table=uap_imagenet on a generated 1,000-class folder (one image per class and split, random weights, 32-px
    crops, one pass over 20 crafting images, 100 test images): every job completes and the generated section sets the published
    figures beside the table's."""
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
    proc = subprocess.run(
        [sys.executable, "-m", "cbuap_runner", "table=uap_imagenet", f"hydra.sweep.dir={sweep}", "progress=off",
         "device=cpu", f"cache_dir={tmp_path / 'cache'}", "model.weights=null", "dataset.resize=36", "dataset.crop=32",
         "dataset.val_size=100", "attack.crafting_images=20", "attack.passes=1", "attack.batch_size=10",
         "eval.num_images=100", "eval.batch_size=100"],
        cwd=REPO, capture_output=True, text=True, timeout=3000, env={**os.environ, "IMAGENET_ROOT": str(root),
                                                                      "WANDB_MODE": "disabled"})
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
