"""Streamed image folders: the same images, batches and metrics as the resident split; the decoded cache; files that
are no images; sharding that counts every image once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from cbuap_runner.data import batches, load_data
from cbuap_runner.errors import UserError
from cbuap_runner.metrics import evaluate_clean, evaluate_perturbation
from cbuap_runner.models import build_model
from helpers import CLASSES, PER_CLASS, mixed_folder, run_cli, stream_args


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return mixed_folder(tmp_path_factory.mktemp("mixed"))


def both(validated, folder: Path, cache: Path, *extra: str):
    """(resident, streamed) bundles of the same folder."""
    out = []
    for mode in ("never", "always"):
        cfg = validated(stream_args(folder, f"dataset.stream={mode}", "dataset.workers=2", *extra))
        out.append(load_data(cfg.dataset, str(cache), cfg.seed, torch.device("cpu")))
    return out


def test_streamed_splits_give_the_same_images_batches_and_metrics(validated, folder, tmp_path):
    resident, streamed = both(validated, folder, tmp_path)
    assert not resident.test.streamed and streamed.test.streamed and streamed.train.streamed
    assert torch.equal(resident.val.x, streamed.val.x) and torch.equal(resident.val.y, streamed.val.y)
    assert torch.equal(resident.test.y, streamed.test.y) and len(resident.train) == len(streamed.train)
    for split in ("train", "test"):  # seeded shuffle and augmentation: the same float batches in the same order
        kw = dict(shuffle=True, crop_padding=2, hflip=True, drop_last=True)
        ours = list(batches(getattr(streamed, split), 10, generator=torch.Generator().manual_seed(5), **kw))
        theirs = list(batches(getattr(resident, split), 10, generator=torch.Generator().manual_seed(5), **kw))
        assert len(ours) == len(theirs) > 1
        for (xa, ya), (xb, yb) in zip(ours, theirs):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    model = build_model("small_cnn", CLASSES, (3, 32, 32), [0.5] * 3, [0.25] * 3).eval()
    delta = torch.rand(3, 32, 32) * 0.3
    got = evaluate_perturbation(model, streamed.test.shard(7, 0, 1), None, delta, CLASSES, 7)
    want = evaluate_perturbation(model, resident.test.x, resident.test.y, delta, CLASSES, 7)
    assert got == want and sum(map(sum, got["transition_matrix"])) == CLASSES * PER_CLASS
    assert evaluate_clean(model, streamed.test.shard(5, 0, 1), None, CLASSES, 5) == evaluate_clean(
        model, resident.test.x, resident.test.y, CLASSES, 5)
    assert streamed.fingerprint != resident.fingerprint  # a streamed split is fingerprinted over its files


@pytest.mark.parametrize("world", [2, 3, 5])
def test_the_shards_of_the_ranks_cover_every_image_once(validated, folder, tmp_path, world):
    _, streamed = both(validated, folder, tmp_path)
    seen = [y for rank in range(world) for _, ys in streamed.test.shard(4, rank, world) for y in ys.tolist()]
    assert sorted(seen) == sorted(streamed.test.y.tolist())  # no image repeated to even out the ranks


def test_the_decoded_cache_is_built_once_and_read_back(validated, folder, tmp_path, monkeypatch):
    _, streamed = both(validated, folder, tmp_path / "plain")
    want = torch.cat([x for x, _ in streamed.test.shard(9, 0, 1)])
    cached = load_data(validated(stream_args(folder, "dataset.stream=always", "dataset.decoded_cache=true")).dataset,
                       str(tmp_path / "cache"), 0, torch.device("cpu"))
    assert len(list((tmp_path / "cache" / "decoded").glob("*.u8"))) == 2
    import cbuap_runner.data.stream as stream

    def no_decoding(*_):
        raise AssertionError("decoded again")

    monkeypatch.setattr(stream.FileDecoder, "__call__", no_decoding)
    again = load_data(validated(stream_args(folder, "dataset.stream=always", "dataset.decoded_cache=true",
                                     "dataset.workers=0")).dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    for bundle in (cached, again):
        got = torch.cat([x for x, _ in bundle.test.shard(9, 0, 1)])
        assert torch.equal(got, want)
        assert bundle.fingerprint == streamed.fingerprint


def test_the_decoded_cache_follows_the_files_and_the_preprocessing(validated, tmp_path):
    root = mixed_folder(tmp_path / "data", per_class=3)
    load = lambda *extra: load_data(validated(stream_args(root, "dataset.stream=always", "dataset.decoded_cache=true",  # noqa: E731
                                                   "dataset.val_size=4", "dataset.workers=0", *extra)).dataset,
                                    str(tmp_path / "cache"), 0, torch.device("cpu"))
    load()
    load("dataset.interpolation=bicubic")
    image = root / "test" / "c0" / "0.png"
    image.write_bytes(encode_png(torch.zeros(3, 40, 40, dtype=torch.uint8)).numpy().tobytes())
    data = load()
    assert len(list((tmp_path / "cache" / "decoded").glob("*.u8"))) == 2 + 2 + 1  # a new test cache only
    first = next(iter(data.test.take([torch.tensor([0])])))[0]
    assert int(first.max()) == 0


def broken_folder(root: Path, how: str) -> Path:
    mixed_folder(root, per_class=3)
    bad = root / "test" / "c1" / "9.jpg"
    if how == "not_an_image":
        bad.write_text("<html>rate limited</html>")
    else:  # a JPEG cut short: the header reads, the pixels do not
        data = encode_jpeg(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)).numpy().tobytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
    return root


def test_a_file_that_is_no_image_is_refused_before_anything_runs(validated, tmp_path):
    root = broken_folder(tmp_path / "data", "not_an_image")
    cfg = validated(stream_args(root, "dataset.stream=always", "dataset.val_size=4"))
    with pytest.raises(UserError, match=r"^\S+/test/c1/9\.jpg: not an image .*set dataset\.bad_files=skip$"):
        load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))


@pytest.mark.parametrize("mode", [["dataset.stream=always"], ["dataset.stream=never"],
                                  ["dataset.stream=always", "dataset.decoded_cache=true"]])
@pytest.mark.parametrize("how", ["not_an_image", "truncated"])
def test_files_that_cannot_be_read_are_skipped_and_counted(validated, tmp_path, how, mode):
    root = broken_folder(tmp_path / "data", how)
    cfg = validated(stream_args(root, *mode, "dataset.val_size=4", "dataset.bad_files=skip", "dataset.workers=0"))
    for _ in range(2):  # the second time from the caches: the skipped file is still counted
        data = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
        seen = [y for _, ys in data.test.shard(4, 0, 1) for y in ys.tolist()]
        assert len(seen) == CLASSES * 3 and seen.count(1) == 3 and data.bad_files.record()["skipped"] == 1
        assert data.bad_files.record()["skipped_files"][0].endswith("test/c1/9.jpg")


def test_a_held_folder_refuses_a_file_it_cannot_decode(validated, tmp_path):
    root = broken_folder(tmp_path / "data", "truncated")
    cfg = validated(stream_args(root, "dataset.stream=never", "dataset.val_size=4"))
    with pytest.raises(UserError, match=r"^\S+/test/c1/9\.jpg: cannot decode image .*dataset\.bad_files=skip$"):
        load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))


def test_a_truncated_file_is_refused_when_it_is_reached(validated, tmp_path):
    root = broken_folder(tmp_path / "data", "truncated")
    cfg = validated(stream_args(root, "dataset.stream=always", "dataset.val_size=4", "dataset.workers=0"))
    data = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    with pytest.raises(UserError, match=r"^\S+/test/c1/9\.jpg: cannot decode image"):
        list(data.test.shard(4, 0, 1))


@pytest.mark.parametrize("mode", ["never", "always"])
def test_an_empty_class_folder_and_classes_one_split_lacks_are_refused(validated, tmp_path, mode):
    root = mixed_folder(tmp_path / "data", per_class=3)
    (root / "train" / "c9").mkdir()
    cfg = validated(stream_args(root, f"dataset.stream={mode}", "dataset.val_size=4"))
    with pytest.raises(UserError, match=r"train/c9: class folder holds no images"):
        load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    (root / "train" / "c9" / "0.png").write_bytes(encode_png(torch.zeros(3, 40, 40, dtype=torch.uint8)).numpy().tobytes())
    with pytest.raises(UserError, match=r"train/ and test/ have other classes \(1 in one only, e\.g\. c9\)"):
        load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))


def test_auto_streams_a_split_larger_than_the_resident_limit(validated, folder, tmp_path):
    limit = 40 * 3 * 32 * 32 / 2**30  # between the test split (48 images) and nothing
    cfg = validated(stream_args(folder, f"dataset.resident_max_gib={limit}"))
    data = load_data(cfg.dataset, str(tmp_path), 0, torch.device("cpu"))
    assert data.test.streamed and data.train.streamed
    cfg = validated(stream_args(folder))
    assert not load_data(cfg.dataset, str(tmp_path), 0, torch.device("cpu")).test.streamed


def test_streaming_a_tensor_dataset_is_refused_in_one_line(validated, tmp_path):
    cfg = validated(["dataset=synthetic", "dataset.stream=always"])
    cfg.dataset.root = str(tmp_path)
    with pytest.raises(UserError, match=r"^dataset\.stream=always: only image folders are streamed"):
        load_data(cfg.dataset, str(tmp_path), 0, torch.device("cpu"))


@pytest.mark.e2e
def test_an_attack_streamed_and_resident_records_the_same_metrics(folder, tmp_path):
    common = stream_args(folder, "model=small_cnn", "attack=sgd_uap", "training.epochs=1", "training.batch_size=8",
                  "attack.crafting_images=16", "attack.batch_size=8", "attack.passes=2", "eval.batch_size=7",
                  "dataset.workers=2", "checkpoint_images=8")
    runs = {}
    for mode in ("never", "always"):
        proc = run_cli([*common, f"dataset.stream={mode}"], tmp_path / mode, cache_dir=tmp_path / f"cache_{mode}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[mode] = json.loads((tmp_path / mode / "run_summary.json").read_text())
    ours, theirs = runs["always"]["metrics"], runs["never"]["metrics"]
    for key in ("clean_acc", "fooling_rate", "adv_acc", "label_entropy", "val_fooling_rate", "num_images"):
        assert ours[key] == theirs[key], key
    per_class = [json.loads((tmp_path / m / "per_class.json").read_text()) for m in ("always", "never")]
    assert per_class[0] == per_class[1]
    assert runs["always"]["provenance"]["data"]["streamed"] == ["train", "test"]
    assert runs["always"]["provenance"]["data"]["bad_files"] == {"policy": "refuse", "skipped": 0, "skipped_files": []}
    assert torch.equal(*(torch.load(tmp_path / m / "perturbation.pt", weights_only=True)["delta"]
                         for m in ("always", "never")))


@pytest.mark.e2e
def test_streamed_data_refuses_an_unbounded_crafting_set(folder, tmp_path):
    proc = run_cli(stream_args(folder, "model=small_cnn", "dataset.stream=always", "training.epochs=1",
                        "attack.crafting_images=null"), tmp_path / "run")
    assert proc.returncode != 0
    assert re.search(r"attack\.crafting_images=null: the training split is streamed \(\d+ images\)", proc.stderr)


def test_a_split_is_looked_over_once(validated, tmp_path, monkeypatch):
    root = broken_folder(tmp_path / "data", "not_an_image")
    cfg = validated(stream_args(root, "dataset.stream=always", "dataset.val_size=4", "dataset.bad_files=skip",
                         "dataset.workers=0"))
    load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    import cbuap_runner.data.folder as folder

    monkeypatch.setattr(folder, "unreadable", lambda path: pytest.fail(f"{path} looked at again"))
    again = load_data(cfg.dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    assert again.bad_files.record()["skipped"] == 1  # the record of the first look still counts it


def test_per_class_keys_give_k_images_of_each_class(validated, folder, tmp_path):
    from cbuap_runner.perturbations import crafting_split

    cfg = validated(stream_args(folder, "dataset.stream=always", "dataset.val_per_class=2", "attack.crafting_per_class=3"))
    data = load_data(cfg.dataset, str(tmp_path), 0, torch.device("cpu"))
    assert torch.bincount(data.val.y).tolist() == [2] * CLASSES
    crafting = crafting_split(cfg.attack, data, 0)
    assert torch.bincount(crafting.y).tolist() == [3] * CLASSES and not crafting.streamed
    assert not set(crafting.x.flatten(1).sum(1).tolist()) & set(data.val.x.flatten(1).sum(1).tolist())


WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


@pytest.mark.e2e
def test_imagenet_layout_with_a_flat_validation_split_streams_end_to_end(tmp_path):
    """dataset=imagenet: train/<wnid>/ and a flat val/ labelled by Kaggle's LOC_val_solution.csv, streamed."""
    root = tmp_path / "ilsvrc"
    mixed_folder(tmp_path / "mixed", per_class=4)
    rows = ["ImageId,PredictionString"]
    for k, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        for i, f in enumerate(sorted((tmp_path / "mixed" / "train" / f"c{k}").iterdir())):
            (root / "train" / wnid / f"{wnid}_{i}{f.suffix.upper()}").write_bytes(f.read_bytes())
        for i, f in enumerate(sorted((tmp_path / "mixed" / "test" / f"c{k}").iterdir())):
            name = f"ILSVRC2012_val_{k * 10 + i + 1:08d}"
            (root / "val").mkdir(exist_ok=True)
            (root / "val" / f"{name}{f.suffix}").write_bytes(f.read_bytes())
            rows.append(f"{name},{wnid} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    proc = run_cli(["dataset=imagenet", f"dataset.root={root}", "dataset.num_classes=4", "dataset.val_per_class=1",
                    "dataset.resize=36", "dataset.crop=32", "dataset.stream=always", "dataset.workers=2",
                    "model=small_cnn", "training.epochs=1", "training.batch_size=4", "attack=sgd_uap",
                    "attack.crafting_per_class=2", "attack.passes=1", "attack.batch_size=4"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["metrics"]["num_images"] == 16 and summary["provenance"]["data"]["streamed"] == ["train", "test"]
    assert summary["metrics"]["craft_images_processed"] == 8
