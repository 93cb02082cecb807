"""Importing published perturbations (import_perturbation.py): files written here in the layouts of
LTS4/universal (precomputed/*.mat: W x H x C, variable r; python/data/universal.npy: 1 x H x W x C; both RGB,
0-255 units), converted to C x H x W RGB in [0,1], refused with one line when they are not perturbations, and
scored by task=evaluate on a random torchvision network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg

from cbuap_runner import import_perturbation as imp
from cbuap_runner.errors import UserError
from cbuap_runner.provenance import file_sha256
from helpers import REPO, run_cli

SIDE = 8  # small perturbations: the declared crop is set to match


def pattern(c: int, h: int, w: int) -> float:
    """A value in 0-255 units that differs along every axis: where it lands shows the axis and channel order."""
    return w - 2.0 * h + 5.0 * c


def reference_whc(side: int = SIDE) -> np.ndarray:
    """The layout of precomputed/*.mat: [W, H, C], RGB."""
    return np.array([[[pattern(c, h, w) for c in range(3)] for h in range(side)] for w in range(side)],
                    dtype=np.float32)


def reference_hwc_batch(side: int = SIDE) -> np.ndarray:
    """The layout of python/data/universal.npy: [1, H, W, C], RGB, float64."""
    return np.array([[[[pattern(c, h, w) for c in range(3)] for w in range(side)] for h in range(side)]])


def expected(side: int = SIDE, channels=(0, 1, 2)) -> torch.Tensor:
    """δ[c, h, w] in [0,1] units, channel c read from the file's channel channels[c]."""
    return torch.tensor([[[pattern(channels[c], h, w) / 255 for w in range(side)] for h in range(side)]
                         for c in range(3)], dtype=torch.float32)


def small(path: Path, **kw) -> dict:
    return imp.imported_perturbation(path, resize=SIDE + 2, crop=SIDE, **kw)


def test_npy_in_the_reference_layout_becomes_chw_rgb_in_unit_range(tmp_path):
    path = tmp_path / "universal.npy"
    np.save(path, reference_hwc_batch())
    blob = small(path)
    delta = blob["delta"]
    assert delta.shape == (3, SIDE, SIDE) and delta.dtype == torch.float32
    assert torch.allclose(delta, expected(), atol=1e-7)
    assert delta[2, 1, 3].item() == pytest.approx((3 - 2 + 10) / 255)  # c=2, h=1, w=3 by hand
    assert blob["norms"]["linf"] == pytest.approx(float(expected().abs().max()))
    assert blob["norms"]["l2"] == pytest.approx(float(expected().norm()), rel=1e-6)
    assert blob["config"] == {"variable": None, "layout": "hwc", "channel_order": "RGB", "scale": 255.0}


def test_mat_in_the_reference_layout_and_the_written_file(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    path = tmp_path / "VGG-16.mat"
    savemat(path, {"r": reference_whc()})
    out = tmp_path / "vgg16.pt"
    assert imp.main([str(path), "--out", str(out), "--resize", str(SIDE + 2), "--crop", str(SIDE)]) == 0
    blob = torch.load(out, weights_only=True)
    assert torch.allclose(blob["delta"], expected(), atol=1e-7)
    assert (blob["attack"], blob["norm"], blob["class_wise"]) == ("imported", "linf", False)
    assert blob["eps"] == blob["norms"]["linf"] == pytest.approx(float(expected().abs().max()))
    space = blob["space"]
    assert (space["channels"], space["channel_order"], space["value_range"], space["resolution"]) == (
        3, "RGB", [0.0, 1.0], [SIDE, SIDE])
    # the form load_data gives image folders resized and cropped (data._preprocessing)
    assert space["added_after"] == {"decode": "resize_crop", "channels": 3, "resize": SIDE + 2, "crop": SIDE,
                                    "interpolation": "bilinear"}
    assert space["network"]["label"] == "LTS4/universal:VGG-16" and space["eps"] == blob["eps"]
    source = blob["provenance"]["imported_from"]
    assert (source["file"], source["sha256"], source["variable"], source["layout"]) == (
        "VGG-16.mat", file_sha256(path), "r", "whc")
    assert blob["provenance"]["identity"] == small(path)["provenance"]["identity"]  # the same import, the same identity
    bgr = small(path, channel_order="bgr")
    assert torch.allclose(bgr["delta"], expected(channels=(2, 1, 0)), atol=1e-7)
    assert bgr["provenance"]["identity"] != blob["provenance"]["identity"]


def test_layout_and_scale_flags(tmp_path):
    path = tmp_path / "chw.npy"
    np.save(path, expected().numpy())  # already C x H x W in [0,1]
    assert torch.equal(small(path, layout="chw", scale=1.0)["delta"], expected())
    np.save(path, reference_whc())  # W x H x C read as H x W x C: the transpose
    assert torch.allclose(small(path, layout="whc")["delta"], expected(), atol=1e-7)
    assert torch.allclose(small(path)["delta"], expected().transpose(1, 2), atol=1e-7)


def _bad_npy(array) -> callable:
    def write(path: Path) -> Path:
        np.save(path, array, allow_pickle=True)
        return path
    return write


def _text(path: Path) -> Path:
    path.write_text("not an array\n")
    return path


NAN = reference_hwc_batch()
NAN[0, 1, 1, 1] = np.nan


@pytest.mark.parametrize("name,write,message", [
    ("flat.npy", _bad_npy(np.zeros((SIDE, SIDE))), "is not one HWC image perturbation"),
    ("batch.npy", _bad_npy(np.zeros((2, SIDE, SIDE, 3))), "is not one HWC image perturbation"),
    ("four.npy", _bad_npy(np.zeros((SIDE, SIDE, 4))), "is not one HWC image perturbation"),
    ("nan.npy", _bad_npy(NAN), "NaN or infinite"),
    ("bool.npy", _bad_npy(np.zeros((SIDE, SIDE, 3), dtype=bool)), "not a perturbation array"),
    ("object.npy", _bad_npy(np.array([{"delta": 1}], dtype=object)), "not a perturbation array"),
    ("text.npy", _text, "not a perturbation array"),
    ("big.npy", _bad_npy(np.full((SIDE, SIDE, 3), 300.0)), "more than --scale 255"),
    ("wide.npy", _bad_npy(np.zeros((SIDE + 1, SIDE + 1, 3))), "the declared preparation crops"),
    ("delta.txt", _text, "unknown format '.txt'"),
])
def test_bad_files_are_refused_with_one_line_naming_the_path(tmp_path, name, write, message):
    path = write(tmp_path / name)
    with pytest.raises(UserError) as err:
        small(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_missing_file_and_npy_variable_are_refused(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        small(tmp_path / "absent.npy")
    np.save(tmp_path / "ok.npy", reference_hwc_batch())
    with pytest.raises(UserError, match="a .npy file holds one array"):
        small(tmp_path / "ok.npy", variable="r")


def test_mat_variables_are_checked(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    path = tmp_path / "two.mat"
    savemat(path, {"a": reference_whc(), "b": reference_whc()})
    with pytest.raises(UserError, match=r"holds a, b; name the perturbation with --variable"):
        small(path)
    with pytest.raises(UserError, match=r"has no variable 'r'; it holds a, b"):
        small(path, variable="r")
    assert torch.allclose(small(path, variable="b")["delta"], expected(), atol=1e-7)
    savemat(path, {"v": reference_whc()})  # one variable under another name: that one
    assert small(path)["config"]["variable"] == "v"
    (tmp_path / "fake.mat").write_bytes(b"\x00" * 200)
    with pytest.raises(UserError, match="not a MATLAB file"):
        small(tmp_path / "fake.mat")


def test_mat_without_scipy_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io now fails
    (tmp_path / "VGG-16.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(UserError, match=r"needs scipy; install the extra: pip install -e '\.\[imagenet\]'"):
        small(tmp_path / "VGG-16.mat")


def test_command_line_refusal_is_one_line_and_exit_1(tmp_path, capsys):
    path = _bad_npy(np.zeros((SIDE, SIDE)))(tmp_path / "flat.npy")
    assert imp.main([str(path), "--out", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and not (tmp_path / "x.pt").exists()
    assert imp.main([str(path), "--out", str(tmp_path / "x.pt"), "--scale", "0"]) == 1


# ---------------------------------------------------------------- task=evaluate of an imported file


def _folders(root: Path, classes=("a", "b", "c")) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 3), ("test", 2)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                write_jpeg((torch.rand(3, 60, 72, generator=g) * 255).to(torch.uint8), str(root / split / name / f"{i}.jpg"))
    return root


@pytest.mark.e2e
def test_cli_imports_and_evaluate_scores_it_on_a_torchvision_network(tmp_path):
    source = tmp_path / "GoogLeNet.npy"
    array = np.random.default_rng(0).uniform(-10, 10, (1, 224, 224, 3))  # the reference's shape and ξ
    np.save(source, array)
    out = tmp_path / "googlenet.pt"
    proc = subprocess.run([sys.executable, "-m", "cbuap_runner.import_perturbation", str(source), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "LTS4/universal:GoogLeNet" in proc.stdout
    root, run_dir = _folders(tmp_path / "images"), tmp_path / "run"
    proc = run_cli(["task=evaluate", f"perturbation={out}", "model=torchvision", "model.arch=squeezenet1_1",
                    "model.weights=null", "dataset=image_folder", f"dataset.root={root}", "dataset.num_classes=3",
                    "dataset.val_size=3", "dataset.resize=256", "dataset.crop=224", "eval.batch_size=8"], run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "run_summary.json").read_text())
    assert record["status"] == "completed"
    metrics, scored = record["metrics"], record["provenance"]["perturbation"]
    assert metrics["perturbation"] == str(out) and metrics["perturbation_attack"] == "imported"
    assert metrics["same_preparation"] is True and metrics["source_model"] == "LTS4/universal:GoogLeNet"
    assert 0.0 <= metrics["fooling_rate"] <= 1.0 and metrics["num_images"] == 6
    assert scored["sha256"] == file_sha256(out) and scored["attack"] == "imported"
    assert scored["eps"] == pytest.approx(float(np.abs(array).max()) / 255, rel=1e-6)
    assert (scored["imported_from"]["file"], scored["imported_from"]["sha256"]) == ("GoogLeNet.npy",
                                                                                    file_sha256(source))
    assert "crafted on images prepared as" not in (run_dir / "cbuap.log").read_text()
