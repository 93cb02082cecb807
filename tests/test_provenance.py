"""What decided a result: the data fingerprint, the weights key behind the model cache, the resume check and model.pt,
and the folder decode cache keyed by the files' content."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_image, encode_jpeg

from cbuap_runner.data import load_data
from cbuap_runner.errors import UserError
from cbuap_runner.models import build_model, save_model
from cbuap_runner.networks import model_cache_path
from cbuap_runner.provenance import files_fingerprint, identity, state_dict_fingerprint, weights_key
from helpers import random_image_folder

SIZE = 16


def image_folder(root: Path, seed: int, jpeg: bool = False) -> Path:
    """3 classes of 6 random SIZE x SIZE images each (the same count and shape for every seed)."""
    return random_image_folder(root, 3, 6, seed=seed, size=SIZE, fmt="jpg" if jpeg else "png")


def folder_args(root: Path) -> list[str]:
    return ["dataset=image_folder", f"dataset.root={root}", "dataset.num_classes=3", f"dataset.image_size={SIZE}",
            "dataset.val_size=3", "dataset.download=false"]


def data_of(validated, root: Path, cache: Path):
    cfg = validated(folder_args(root))
    return cfg, load_data(cfg.dataset, str(cache), cfg.seed, torch.device("cpu"))


def test_other_images_under_a_same_shaped_folder_get_another_model_slot(validated, tmp_path):
    a, b = image_folder(tmp_path / "a", seed=0), image_folder(tmp_path / "b", seed=1)
    cfg_a, data_a = data_of(validated, a, tmp_path / "cache")
    cfg_b, data_b = data_of(validated, b, tmp_path / "cache")
    assert data_a.fingerprint != data_b.fingerprint
    assert model_cache_path(cfg_a, weights_key(cfg_a, data_a.fingerprint)) != \
        model_cache_path(cfg_b, weights_key(cfg_b, data_b.fingerprint))
    copy = tmp_path / "copy_of_a"
    shutil.copytree(a, copy)  # the same data under another root: the same fingerprint and slot
    cfg_c, data_c = data_of(validated, copy, tmp_path / "cache")
    assert data_c.fingerprint == data_a.fingerprint
    assert model_cache_path(cfg_c, weights_key(cfg_c, data_c.fingerprint)) == \
        model_cache_path(cfg_a, weights_key(cfg_a, data_a.fingerprint))


def test_an_image_reencoded_in_place_with_its_mtime_kept_changes_the_data(validated, tmp_path):
    a = image_folder(tmp_path / "a", seed=0, jpeg=True)
    _, before = data_of(validated, a, tmp_path / "cache")
    victim = a / "train" / "c0" / "0.jpg"
    st = victim.stat()
    image = decode_image(torch.frombuffer(bytearray(victim.read_bytes()), dtype=torch.uint8))
    victim.write_bytes(encode_jpeg(image, quality=40).numpy().tobytes())
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    _, after = data_of(validated, a, tmp_path / "cache")
    assert after.fingerprint != before.fingerprint  # the decode cache was not reused for the rewritten file


def test_decode_cache_follows_swapped_files(validated, tmp_path):
    a = image_folder(tmp_path / "a", seed=0)
    _, before = data_of(validated, a, tmp_path / "cache")
    c0, c1 = a / "train" / "c0", a / "train" / "c1"
    c0.rename(a / "train" / "tmp")
    c1.rename(c0)
    (a / "train" / "tmp").rename(c1)
    os.utime(a / "train", ns=(0, (a / "train").stat().st_mtime_ns))
    _, after = data_of(validated, a, tmp_path / "cache")
    fresh = load_data(validated(folder_args(a)).dataset, str(tmp_path / "fresh_cache"), 0, torch.device("cpu"))
    assert torch.equal(after.train.y, fresh.train.y) and torch.equal(after.train.x, fresh.train.x)
    assert after.fingerprint == fresh.fingerprint != before.fingerprint


def test_weights_key_holds_amp_and_the_init_weights_not_their_path(validated, tmp_path):
    cfg = validated(["dataset=synthetic"])
    key = weights_key(cfg, "fp")
    assert weights_key(validated(["dataset=synthetic", "training.amp=true"]), "fp") != key
    assert weights_key(validated(["dataset=synthetic", "device=cpu", "progress=off", "cache_dir=/x"]), "fp") == key
    assert weights_key(cfg, "other data") != key
    assert identity(weights_key(validated(["dataset=synthetic", "seed=3"]), "fp")) == identity(key)
    model = build_model("small_cnn", 4, (3, 16, 16))
    for name in ("one.pt", "two.pt"):
        save_model(str(tmp_path / name), model, {"name": "small_cnn"}, "synthetic", 4, (3, 16, 16))
    one = weights_key(validated(["dataset=synthetic", f"training.init_checkpoint={tmp_path / 'one.pt'}"]), "fp")
    two = weights_key(validated(["dataset=synthetic", f"training.init_checkpoint={tmp_path / 'two.pt'}"]), "fp")
    assert one["training"]["init_checkpoint"].startswith("weights:") and one == two  # same weights, other file
    assert "init_identity" not in one  # a file that names no identity: its weights' hash stands for it


def test_seeds_fine_tuned_from_the_seeds_of_one_experiment_share_an_identity(validated, tmp_path):
    """Each seed starts from its own seed's network of one earlier experiment: other weights, one experiment."""
    keys = {}
    for seed in (0, 1):
        start = tmp_path / f"natural_seed{seed}.pt"
        torch.manual_seed(seed)
        save_model(str(start), build_model("small_cnn", 4, (3, 16, 16)), {"name": "small_cnn"}, "synthetic", 4,
                   (3, 16, 16), provenance={"identity": "natural-experiment"})
        keys[seed] = weights_key(validated(["dataset=synthetic", f"seed={seed}", "training=uat",
                                            f"training.init_checkpoint={start}"]), "fp")
    assert keys[0]["training"]["init_checkpoint"] != keys[1]["training"]["init_checkpoint"]  # the cache tells them apart
    assert identity(keys[0]) == identity(keys[1])
    other = tmp_path / "other.pt"
    save_model(str(other), build_model("small_cnn", 4, (3, 16, 16)), {"name": "small_cnn"}, "synthetic", 4,
               (3, 16, 16), provenance={"identity": "another-experiment"})
    moved = weights_key(validated(["dataset=synthetic", "training=uat", f"training.init_checkpoint={other}"]), "fp")
    assert identity(moved) != identity(keys[0])


def test_files_fingerprint_is_relative_and_sees_size_and_mtime(tmp_path):
    a = image_folder(tmp_path / "a", seed=0)
    files = sorted((a / "train").rglob("*.png"))
    first = files_fingerprint(a / "train", files)
    b = tmp_path / "b"
    shutil.copytree(a, b, copy_function=shutil.copy2)  # copy2 keeps the modification times
    assert files_fingerprint(b / "train", sorted((b / "train").rglob("*.png"))) == first
    os.utime(files[0], ns=(0, 12345))
    assert files_fingerprint(a / "train", files) != first
    assert files_fingerprint(b / "train", sorted((b / "train").rglob("*.png")), {"resize": 32}) != first


@pytest.mark.e2e
def test_model_file_and_record_name_what_trained_and_what_was_used(cli):
    args = ["dataset=synthetic", "training.epochs=1", "attack.crafting_images=64", "attack.passes=1",
            "attack.batch_size=32", "eval.num_images=64"]
    proc, run = cli(["task=attack", *args])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "run_summary.json").read_text())
    prov = summary["provenance"]
    assert prov["data"]["fingerprint"] and prov["model"]["source"] == "trained" and len(prov["model"]["sha256"]) == 64
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["provenance"]["identity"] == prov["model"]["identity"] and blob["provenance"]["code"]
    assert blob["provenance"]["weights_key"]["data"] == prov["data"]["fingerprint"]
    proc, again = cli(["task=attack", *args])  # the cached model: same identity, source cache
    assert proc.returncode == 0, proc.stderr
    reused = json.loads((again / "run_summary.json").read_text())["provenance"]["model"]
    assert reused["source"] == "cache" and reused["identity"] == prov["model"]["identity"]
    # the weights' own hash: the file's, whichever run wrote or read it
    assert prov["model"]["weights_fingerprint"] == reused["weights_fingerprint"] == state_dict_fingerprint(
        blob["state_dict"])
    proc, evaluated = cli(["task=evaluate", *args, f"perturbation={run / 'perturbation.pt'}",
                           f"model.checkpoint={run / 'model.pt'}"])
    assert proc.returncode == 0, proc.stderr
    pert = json.loads((evaluated / "run_summary.json").read_text())["provenance"]["perturbation"]
    assert pert["attack"] == "cb_uap" and pert["eps"] == summary["config"]["attack"]["eps"] and pert["identity"]
    assert pert["crafted_on_weights"] == prov["model"]["weights_fingerprint"]  # the weights it was crafted on


@pytest.mark.e2e
def test_resume_refuses_a_checkpoint_trained_on_other_data(cli, tmp_path):
    from helpers import run_cli

    a, b = image_folder(tmp_path / "a", seed=0), image_folder(tmp_path / "b", seed=1)
    run = tmp_path / "run"
    train = ["task=train", "training.epochs=1", "training.batch_size=8", "eval.batch_size=16"]
    assert run_cli([*folder_args(a), *train], run).returncode == 0
    (run / "model.pt").unlink()
    proc = run_cli([*folder_args(b), *train], run)  # resume=auto into the same directory, other images
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "data=" in line and "checkpoint.pt was trained with data=" in line


def test_a_cache_slot_holding_another_model_is_not_used(validated, tmp_path):
    from cbuap_runner.networks import _cached_model
    from cbuap_runner.provenance import digest

    cfg = validated(["dataset=synthetic", f"cache_dir={tmp_path}"])
    key = weights_key(cfg, "fp")
    slot = model_cache_path(cfg, key)
    slot.parent.mkdir(parents=True)
    for stored, usable in (({"digest": "something else"}, False), ({}, False), ({"digest": digest(key)}, True)):
        save_model(str(slot), build_model("small_cnn", 4, (3, 16, 16)), {"name": "small_cnn"}, "synthetic", 4,
                   (3, 16, 16), provenance=stored)
        assert (_cached_model(slot, key) is not None) == usable, stored


def test_model_checkpoint_of_another_dataset_is_refused(tmp_path, validated):
    from cbuap_runner.networks import _check_model_fits

    cfg = validated(["dataset=synthetic"])
    data = load_data(cfg.dataset, str(tmp_path), 0, torch.device("cpu"))
    path = tmp_path / "mnist_model.pt"
    save_model(str(path), build_model("small_cnn", 4, data.input_shape), {"name": "small_cnn"}, "mnist", 4,
               data.input_shape)
    with pytest.raises(UserError, match=r"model.checkpoint=.*was trained on dataset=mnist, this run reads dataset=synthetic"):
        _check_model_fits(str(path), data, "model.checkpoint", dataset="synthetic")


@pytest.mark.parametrize("key,value", [("patience", 2), ("fooling_target", 0.5), ("passes", 3), ("crafting_images", 100),
                                       ("tol", 0.1), ("step_decay", 0.5), ("balance.start", 1)])
def test_cb_uat_refuses_stage_one_keys_it_cannot_honour(validated, key, value):
    with pytest.raises(UserError, match=rf"^training.adversary.{key}=.*training=cb_uat refreshes its pool"):
        validated(["dataset=synthetic", "training=cb_uat", f"training.adversary.{key}={value}"])
