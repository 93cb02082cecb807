"""Data readers (IDX, Debian's Fashion-MNIST, image folders), balanced sampling and batched augmentation."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from cbuap_runner.data import Split, augment, balanced_subset, batches, load_data
from cbuap_runner.data.idx import read_idx
from cbuap_runner.data.sources import DEBIAN_FASHION_MNIST
from cbuap_runner.errors import UserError


def write_idx(path: Path, array: torch.Tensor, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.to(torch.uint8).numpy().tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_round_trip(tmp_path):
    images = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "b", images, gz=False)
    assert torch.equal(read_idx(tmp_path / "a.gz"), images)
    assert torch.equal(read_idx(tmp_path / "b"), images)


def test_idx_truncated_and_foreign(tmp_path):
    write_idx(tmp_path / "a", torch.zeros(5, 4, 4), gz=False)
    (tmp_path / "cut").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "cut")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "png")


def _idx_dataset(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", torch.arange(n) % 10)


def test_mnist_from_idx_files_under_root(validated, tmp_path):
    _idx_dataset(tmp_path / "mnist")
    cfg = validated(["dataset=mnist", f"dataset.root={tmp_path / 'mnist'}", "dataset.download=false",
                     "dataset.val_size=10"])
    data = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    assert data.train.x.shape == (30, 1, 28, 28) and data.train.x.dtype == torch.uint8 and len(data.val) == 10
    assert data.test.y.tolist() == [k % 10 for k in range(20)]


def test_a_tensor_dataset_meets_the_models_preprocessing(validated, tmp_path):
    """A model that declares resize/crop gets IDX images resized and cropped batch by batch (held at their own size),
    the same pixels as Preprocessing.apply on each image; the record and the fingerprint say so."""
    from cbuap_runner.data.folder import Preprocessing

    _idx_dataset(tmp_path / "mnist")
    cfg = validated(["dataset=mnist", f"dataset.root={tmp_path / 'mnist'}", "dataset.download=false",
                     "dataset.val_size=10"])
    pre = Preprocessing(40, 36, "bicubic")
    data = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"), declared=pre)
    plain = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    assert data.input_shape == (1, 36, 36) and data.train.x.shape[1:] == (1, 28, 28)  # held as read
    assert data.preprocessing == {"decode": "resize_crop", "channels": 1, "resize": 40, "crop": 36,
                                  "interpolation": "bicubic"}
    assert data.val.x.shape == (10, 1, 36, 36) and data.fingerprint != plain.fingerprint
    x, y = next(batches(data.test, 8))
    assert x.shape == (8, 1, 36, 36) and torch.equal(y, plain.test.y[:8])
    assert torch.equal(x, pre.apply(plain.test.x[:8]).float() / 255)
    assert torch.equal(pre.apply(plain.test.x[3]), pre.apply(plain.test.x[:8])[3])  # batched = one by one
    with pytest.raises(UserError, match=r"^dataset\.crop=36: dataset=mnist's images are 28x28, smaller than the crop"):
        load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"), declared=Preprocessing(None, 36))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data)")
def test_debian_fashion_mnist_reader(validated, tmp_path):
    cfg = validated(["dataset=fashion_mnist", f"dataset.root={tmp_path / 'none'}", "dataset.download=false"])
    data = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    assert data.train.x.shape == (55000, 1, 28, 28) and data.test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train.y).tolist() == [5500] * 10 and torch.bincount(data.val.y).tolist() == [500] * 10
    assert 60 < data.train.x.float().mean() < 80  # Fashion-MNIST's mean pixel is ~72.9


def _image_tree(root: Path, classes=("cat", "ant", "bee"), per_class: int = 4, size: int = 8) -> dict:
    truth = {}
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
                path = root / split / c / f"{i}.png"
                path.write_bytes(encode_png(image).numpy().tobytes())
                truth[(split, c, i)] = image
        (root / split / "cat" / "x.jpg").write_bytes(encode_jpeg(torch.zeros(3, size, size, dtype=torch.uint8)).numpy().tobytes())
    return truth


def test_image_folder_reader_and_cache(validated, tmp_path):
    truth = _image_tree(tmp_path / "tree")
    cfg = validated(["dataset=image_folder", f"dataset.root={tmp_path / 'tree'}", "dataset.num_classes=3",
                     "dataset.image_size=8", "dataset.download=false", "dataset.val_size=3"])
    data = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    assert data.class_names == ["ant", "bee", "cat"]  # sorted folder names give the labels
    assert data.train.x.shape == (10, 3, 8, 8) and data.val.x.shape == (3, 3, 8, 8)
    assert torch.bincount(torch.cat([data.train.y, data.val.y])).tolist() == [4, 4, 5]
    images = torch.cat([data.train.x, data.val.x])
    assert any(torch.equal(img, truth[("train", "ant", 0)]) for img in images)  # PNG decodes losslessly
    assert len(list((tmp_path / "cache" / "folders").glob("*.pt"))) == 2
    again = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    assert torch.equal(again.train.x, data.train.x)


def test_image_folder_wrong_size_is_a_user_error(validated, tmp_path):
    _image_tree(tmp_path / "tree", size=8)
    cfg = validated(["dataset=image_folder", f"dataset.root={tmp_path / 'tree'}", "dataset.num_classes=3"])
    with pytest.raises(UserError, match="image_size"):
        load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))


def test_balanced_subset_is_seeded_and_balanced():
    y = torch.arange(1000) // 100  # sorted by class, like folder datasets
    a, b = balanced_subset(y, 50, seed=3), balanced_subset(y, 50, seed=3)
    assert torch.equal(a, b) and a.numel() == 50 and a.unique().numel() == 50
    assert torch.bincount(y[a], minlength=10).tolist() == [5] * 10
    assert not torch.equal(a, balanced_subset(y, 50, seed=4))


def test_augment_crop_and_flip_are_batched_tensor_ops():
    x = torch.rand(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = augment(x, crop_padding=2, hflip=True, generator=g)
    assert out.shape == x.shape
    # every output is the input shifted by at most 2 pixels (zero-padded) and maybe flipped
    for i in range(8):
        candidates = []
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        for dy in range(5):
            for dx in range(5):
                crop = padded[:, dy:dy + 8, dx:dx + 8]
                candidates += [crop, crop.flip(2)]
        assert any(torch.equal(out[i], c) for c in candidates)
    assert not torch.equal(out, x)


def test_batches_cover_split_once_and_do_not_modify_it():
    split = Split(torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8), torch.arange(50))
    before = split.x.clone()
    seen = torch.cat([yb for _, yb in batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(50))
    assert torch.equal(split.x, before)
    xb, _ = next(batches(split, 16))
    assert xb.dtype == torch.float32 and 0 <= xb.min() and xb.max() <= 1


def test_validation_split_is_seeded_balanced_and_never_trained_on(validated, tmp_path):
    cfg = validated(["dataset=synthetic", "dataset.val_size=40", "dataset.train_subset=100"])
    data = load_data(cfg.dataset, str(tmp_path), seed=0, device=torch.device("cpu"))
    assert len(data.val) == 40 and len(data.train) == 100
    assert torch.bincount(data.val.y, minlength=4).tolist() == [10, 10, 10, 10]
    pixels = lambda split: {bytes(img.numpy()) for img in split.x}  # noqa: E731
    assert not pixels(data.val) & pixels(data.train)  # no validation image is in the training split
    other = load_data(cfg.dataset, str(tmp_path), seed=1, device=torch.device("cpu"))
    again = load_data(cfg.dataset, str(tmp_path), seed=0, device=torch.device("cpu"))
    assert torch.equal(again.val.x, data.val.x) and not torch.equal(other.val.x, data.val.x)


def test_validation_split_larger_than_training_is_a_user_error(validated, tmp_path):
    cfg = validated(["dataset=synthetic", "dataset.val_size=10000"])
    with pytest.raises(UserError, match="dataset.val_size"):
        load_data(cfg.dataset, str(tmp_path), seed=0, device=torch.device("cpu"))
