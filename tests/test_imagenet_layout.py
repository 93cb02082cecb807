"""The ILSVRC2012 layout (data/imagenet.py): files, labels and class names of each layout, and its refusals."""

from __future__ import annotations

import io
import logging
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from cbuap_runner.data.imagenet import DEVKIT, FolderListing, imagenet_split, torchvision_categories
from cbuap_runner.errors import UserError

JPEG = bytes(encode_jpeg(torch.full((3, 8, 8), 128, dtype=torch.uint8)).numpy())
PNG = bytes(encode_png(torch.full((3, 8, 8), 64, dtype=torch.uint8)).numpy())
WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted: class 0, 1, 2
# (ILSVRC2012_ID, wnid, words): the devkit numbers its classes in another order than the sorted wnids
SYNSETS = [(1, "n01484850", "great white shark, white shark"), (2, "n01440764", "tench, Tinca tinca"),
           (3, "n01443537", "goldfish, Carassius auratus")]
VAL_IDS = [2, 1, 3, 1, 2, 3]  # image k's ILSVRC2012_ID; wnids n01440764, n01484850, n01443537, ...
VAL_LABELS = [0, 2, 1, 2, 0, 1]


def write(path: Path, data: bytes = JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def train_folders(root: Path, wnids=WNIDS, per_class: int = 2) -> None:
    for w in wnids:
        for k in range(per_class):
            write(root / "train" / w / f"{w}_{k}.JPEG")


def flat_val(root: Path, n: int = len(VAL_IDS)) -> list[Path]:
    return [write(root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG") for k in range(1, n + 1)]


def meta_mat(synsets) -> bytes:
    """meta.mat as the devkit has it: one struct per synset, the 1,000 leaves (num_children 0) and their parents."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, words, "a gloss", 0, np.zeros((1, 0)), 0, 1300) for i, w, words in synsets]
    rows.append((len(synsets) + 1, "n00001740", "entity", "the root", 2, np.array([1, 2]), 18, 0))
    table = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for r, row in enumerate(rows):
        for f, value in zip(fields, row):
            table[r, 0][f] = value
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": table})
    return out.getvalue()


def devkit(root: Path, synsets=SYNSETS, val_ids=VAL_IDS, archive: bool = False) -> None:
    files = {f"{DEVKIT}/data/meta.mat": meta_mat(synsets),
             f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt": "".join(f"{i}\n" for i in val_ids).encode()}
    if not archive:
        for name, data in files.items():
            write(root / name, data)
        return
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / f"{DEVKIT}.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def refused(root: Path, split: str) -> str:
    with pytest.raises(UserError) as caught:
        imagenet_split(root, split)
    line = str(caught.value)
    assert "\n" not in line
    return line


def test_class_folders_sorted_with_labels(tmp_path, caplog):
    root = tmp_path / "imagenet"
    train_folders(root)
    write(root / "train" / WNIDS[0] / "extra.png", PNG)
    write(root / "train" / WNIDS[0] / "upper.PNG", PNG)
    write(root / "train" / WNIDS[0] / "notes.txt", b"not an image")
    (root / "train" / ".cache").mkdir()
    for w in WNIDS[:2]:
        write(root / "val" / w / f"ILSVRC2012_val_{w}.JPEG")
    with caplog.at_level(logging.INFO, logger="cbuap_runner.data.imagenet"):
        train = imagenet_split(root, "train")
        test = imagenet_split(root, "test")
    assert isinstance(train, FolderListing)
    assert train.classes == test.classes == WNIDS == sorted(WNIDS)
    assert train.names == WNIDS  # no table: the wnids themselves
    assert [(p.relative_to(root).as_posix(), y) for p, y in train.files] == [
        (f"train/{WNIDS[0]}/extra.png", 0), (f"train/{WNIDS[0]}/{WNIDS[0]}_0.JPEG", 0),
        (f"train/{WNIDS[0]}/{WNIDS[0]}_1.JPEG", 0), (f"train/{WNIDS[0]}/upper.PNG", 0),
        (f"train/{WNIDS[1]}/{WNIDS[1]}_0.JPEG", 1), (f"train/{WNIDS[1]}/{WNIDS[1]}_1.JPEG", 1),
        (f"train/{WNIDS[2]}/{WNIDS[2]}_0.JPEG", 2), (f"train/{WNIDS[2]}/{WNIDS[2]}_1.JPEG", 2)]
    assert [y for _, y in test.files] == [0, 1] and all(p.parent.parent == root / "val" for p, _ in test.files)
    hints = [r for r in caplog.records if "LOC_synset_mapping.txt" in r.getMessage()]
    assert len(hints) == 1  # said once, naming where names come from


def test_test_folder_in_place_of_val(tmp_path):
    train_folders(tmp_path)
    write(tmp_path / "test" / WNIDS[2] / "a.jpg")
    listing = imagenet_split(tmp_path, "test")
    assert listing.files == [(tmp_path / "test" / WNIDS[2] / "a.jpg", 2)]


@pytest.mark.parametrize("archive", [False, True], ids=["unpacked", "archive"])
def test_flat_val_labelled_by_the_devkit(tmp_path, archive):
    pytest.importorskip("scipy")
    train_folders(tmp_path)
    files = flat_val(tmp_path)
    devkit(tmp_path, archive=archive)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    listing = imagenet_split(tmp_path, "test")
    assert listing.files == list(zip(files, VAL_LABELS))
    assert listing.classes == WNIDS
    assert listing.names == ["tench", "goldfish", "great white shark"]  # the first of each class's words
    assert imagenet_split(tmp_path, "train").names == listing.names
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing unpacked into root


def test_flat_val_labelled_by_kaggle_files_in_kaggle_layout(tmp_path):
    top = tmp_path / "imagenet-object-localization-challenge"
    root = top / "ILSVRC" / "Data" / "CLS-LOC"
    train_folders(root)
    files = flat_val(root, 3)
    write(root / "test" / "ILSVRC2012_test_00000001.JPEG")  # Kaggle's unlabelled test images: not the evaluated split
    wnids = [WNIDS[2], WNIDS[0], WNIDS[1]]
    rows = [f"ILSVRC2012_val_{k:08d},{w} 1 2 30 40 {w} 5 6 70 80" for k, w in zip((3, 1, 2), (wnids[2], wnids[0],
                                                                                                  wnids[1]))]
    write(top / "LOC_val_solution.csv", ("ImageId,PredictionString\n" + "\n".join(rows) + "\n").encode())
    write(top / "LOC_synset_mapping.txt", "".join(f"{w} {words}\n" for _, w, words in SYNSETS).encode())
    listing = imagenet_split(root, "test")
    assert listing.files == list(zip(files, [2, 0, 1]))
    assert listing.names == ["tench", "goldfish", "great white shark"]


def test_torchvision_meta_bin(tmp_path):
    train_folders(tmp_path)
    files = flat_val(tmp_path, 2)
    torch.save(({"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish",), "n01484850": ("great white shark",)},
                ["n01484850", "n01440764"]), tmp_path / "meta.bin")
    listing = imagenet_split(tmp_path, "test")
    assert listing.files == list(zip(files, [2, 0]))
    assert listing.names == ["tench", "goldfish", "great white shark"]


def fake_1000(categories: list[str]) -> list[tuple[int, str, str]]:
    """A 1,000-class devkit table whose first words are torchvision's categories, but for the two cranes and
    maillots, whose first words are the same word (as in ILSVRC2012)."""
    first = list(categories)
    first[134] = first[517] = "crane"
    first[638] = first[639] = "maillot"
    wnids = [f"n{k:08d}" for k in range(1000)]
    order = np.random.default_rng(0).permutation(1000)  # the devkit's IDs are in another order
    return [(int(i) + 1, wnids[k], f"{first[k]}, synonym {k}") for i, k in zip(order, range(1000))]


def test_subset_named_from_a_1000_class_devkit(tmp_path):
    pytest.importorskip("scipy")
    categories = torchvision_categories()
    chosen = sorted([*range(0, 980, 10), 134, 639])
    assert len(chosen) == 100
    train_folders(tmp_path, [f"n{k:08d}" for k in chosen], per_class=1)
    devkit(tmp_path, fake_1000(categories), val_ids=[], archive=True)
    listing = imagenet_split(tmp_path, "train")
    assert listing.classes == [f"n{k:08d}" for k in chosen]
    assert listing.names == [categories[k] for k in chosen]  # torchvision's, so they match its networks'
    assert "crane bird" in listing.names and "maillot tank suit" in listing.names


def test_small_table_names_by_first_words_and_non_wnid_folders_by_themselves(tmp_path):
    train_folders(tmp_path, ["cat", "dog", WNIDS[1]], per_class=1)
    write(tmp_path / "LOC_synset_mapping.txt", b"n01443537 goldfish, Carassius auratus\nn01440764 tench\n")
    assert imagenet_split(tmp_path, "train").names == ["cat", "dog", "goldfish"]  # not an error


def test_1000_wnid_folders_take_torchvision_categories(tmp_path):
    wnids = [f"n{k:08d}" for k in range(1000)]
    train_folders(tmp_path, wnids, per_class=1)
    assert imagenet_split(tmp_path, "train").names == torchvision_categories()
    other = tmp_path / "other"
    train_folders(other, [f"c{k:03d}" for k in range(1000)], per_class=1)
    assert imagenet_split(other, "train").names[:2] == ["c000", "c001"]


# ---------------------------------------------------------------- refusals: one line naming the path


def test_refuses_no_train_folder(tmp_path):
    write(tmp_path / "val" / WNIDS[0] / "a.JPEG")
    line = refused(tmp_path, "test")
    assert str(tmp_path / "train") in line


def test_refuses_empty_class_folders(tmp_path):
    train_folders(tmp_path)
    (tmp_path / "train" / "n09999999").mkdir()
    assert str(tmp_path / "train" / "n09999999") in refused(tmp_path, "train")
    (tmp_path / "train" / "n09999999").rmdir()
    (tmp_path / "val" / WNIDS[1]).mkdir(parents=True)
    assert str(tmp_path / "val" / WNIDS[1]) in refused(tmp_path, "test")


def test_refuses_validation_classes_missing_from_train(tmp_path):
    train_folders(tmp_path, WNIDS[:1])
    for w in WNIDS:
        write(tmp_path / "val" / w / "a.JPEG")
    line = refused(tmp_path, "test")
    assert str(tmp_path / "val") in line and "2 validation classes" in line and WNIDS[1] in line and WNIDS[2] in line


def test_refuses_flat_devkit_labels_outside_a_train_subset(tmp_path):
    pytest.importorskip("scipy")
    train_folders(tmp_path, WNIDS[:2])
    flat_val(tmp_path)
    devkit(tmp_path)
    line = refused(tmp_path, "test")
    assert f"{tmp_path / 'val'} (labelled by {tmp_path / DEVKIT})" in line and "1 validation class" in line
    assert WNIDS[2] in line


def test_refuses_no_validation_folder(tmp_path):
    train_folders(tmp_path)
    assert str(tmp_path / "val") in refused(tmp_path, "test")


def test_refuses_flat_val_without_labels(tmp_path):
    train_folders(tmp_path)
    flat_val(tmp_path)
    line = refused(tmp_path, "test")
    assert str(tmp_path / "val") in line and f"{DEVKIT}.tar.gz" in line and "LOC_val_solution.csv" in line
    assert str(tmp_path) in line


def test_refuses_unlisted_flat_file(tmp_path):
    pytest.importorskip("scipy")
    train_folders(tmp_path)
    flat_val(tmp_path)
    devkit(tmp_path)
    stray = write(tmp_path / "val" / "holiday.jpg")
    line = refused(tmp_path, "test")
    assert str(stray) in line and str(tmp_path / DEVKIT) in line


def test_refuses_a_label_count_that_differs(tmp_path):
    train_folders(tmp_path)
    flat_val(tmp_path, 4)  # the labels list 6
    devkit(tmp_path, archive=True)
    line = refused(tmp_path, "test")
    assert str(tmp_path / f"{DEVKIT}.tar.gz") in line and "6" in line and "4" in line


def test_refuses_mixed_val_layout(tmp_path):
    train_folders(tmp_path)
    flat_val(tmp_path, 1)
    write(tmp_path / "val" / WNIDS[0] / "a.JPEG")
    assert str(tmp_path / "val") in refused(tmp_path, "test")


def test_refuses_a_damaged_devkit_archive(tmp_path):
    train_folders(tmp_path)
    flat_val(tmp_path)
    write(tmp_path / f"{DEVKIT}.tar.gz", b"\x1f\x8b\x08 not really gzip")
    assert str(tmp_path / f"{DEVKIT}.tar.gz") in refused(tmp_path, "test")


def test_missing_scipy_names_the_extra(tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    train_folders(tmp_path)
    flat_val(tmp_path)
    devkit(tmp_path)
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    line = refused(tmp_path, "test")
    assert "cbuap-runner[imagenet]" in line and str(tmp_path / DEVKIT) in line


# ---------------------------------------------------------------- the config option


def test_imagenet_config_composes(validated, monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", "/data/ilsvrc2012")
    cfg = validated(["dataset=imagenet"]).dataset
    assert (cfg.name, cfg.root, cfg.download, cfg.num_classes, cfg.channels, cfg.image_size) == (
        "imagenet", "/data/ilsvrc2012", False, 1000, 3, 224)
    assert cfg.eps == pytest.approx(10 / 255) and cfg.val_size == 10000
    assert list(cfg.mean) == [0.485, 0.456, 0.406] and list(cfg.std) == [0.229, 0.224, 0.225]


def test_refuses_a_damaged_meta_mat_and_meta_bin(tmp_path):
    train_folders(tmp_path)
    flat_val(tmp_path)
    write(tmp_path / "meta.bin", b"not a torch file")
    assert str(tmp_path / "meta.bin") in refused(tmp_path, "test")
    pytest.importorskip("scipy")
    write(tmp_path / DEVKIT / "data" / "meta.mat", b"MATLAB 5.0 MAT-file, but cut")
    assert str(tmp_path / DEVKIT) in refused(tmp_path, "test")
