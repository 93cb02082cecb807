"""Streamed image folders, measured: loader throughput against PIL's decode alone, SGD-UAP crafting fed by the stream
against crafting from resident tensors, peak memory (proportional set size of the process and its loader workers,
summed) of a streamed evaluation at two split sizes with the decoded cache off and on, and the decoded cache's
second evaluation against its first. Prints the figures and writes a JSON record.

    python scripts/stream_bench.py --root /tmp/stream_bench --sizes 20000,100000 --out docs/results/bench/stream.json

The folders are generated once under --root (224-px JPEGs of smooth random images, 100 classes); the model is a
tiny network (average pooling, one convolution, a linear head) so that the loader, not the network, is measured.
Timings alternate between the compared variants over --rounds rounds on one machine; run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.io import encode_jpeg

from cbuap_runner.attacks import attack_config, craft
from cbuap_runner.data import load_data
from cbuap_runner.metrics import evaluate_perturbation
from cbuap_runner.schema import DatasetConfig

CLASSES, SIDE = 100, 224
PREPROCESSING = dict(resize=256, crop=224, interpolation="bilinear")  # torchvision's IMAGENET1K_V1 preset


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(8), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, CLASSES)).eval()


def generate(root: Path, test_images: int, train_per_class: int = 20) -> Path:
    """<root>/{train,test}/c<k>/<i>.jpg: smooth random 224-px images (about the size of a natural photo's JPEG)."""
    done = root / ".complete"
    if done.is_file():
        return root
    g = torch.Generator().manual_seed(test_images)
    for split, count in (("train", train_per_class * CLASSES), ("test", test_images)):
        for i in range(count):
            folder = root / split / f"c{i % CLASSES:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = torch.rand(1, 3, 14, 14, generator=g)
            image = torch.nn.functional.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
            image = (image[0] * 200 + torch.rand(3, SIDE, SIDE, generator=g) * 40).clamp(0, 255).to(torch.uint8)
            (folder / f"{i:06d}.jpg").write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    done.touch()
    return root


def dataset(root: Path, **keys) -> DatasetConfig:
    return DatasetConfig(name="image_folder", root=str(root), download=False, num_classes=CLASSES, channels=3,
                         image_size=SIDE, mean=[0.5] * 3, std=[0.25] * 3, eps=10 / 255, val_size=CLASSES,
                         stream="always", **{**PREPROCESSING, **keys})


def pil_rate(files: list[Path]) -> float:
    """Images per second of PIL's decode alone (to RGB pixels in a numpy array), one process."""
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as image:
            np.asarray(image.convert("RGB"))
    return len(files) / (time.perf_counter() - t0)


def pil_resize_rate(files: list[Path]) -> float:
    """Images per second of PIL's decode with the same preparation in PIL (shorter side to 256, bilinear, centre
    crop 224), one process: what a PIL-based loader would do per image."""
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as image:
            image = image.convert("RGB")
            w, h = image.size
            scale = PREPROCESSING["resize"] / min(w, h)
            image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
            left, top = (image.size[0] - SIDE) // 2, (image.size[1] - SIDE) // 2
            np.asarray(image.crop((left, top, left + SIDE, top + SIDE)))
    return len(files) / (time.perf_counter() - t0)


def loader_rate(split, batch: int) -> float:
    """Images per second through the streamed split's loader (decode, resize 256, crop 224, collate)."""
    t0 = time.perf_counter()
    seen = sum(x.shape[0] for x, _ in split.shard(batch, 0, 1))
    return seen / (time.perf_counter() - t0)


def measure_loader(root: Path, images: int, rounds: int, cache: Path) -> dict:
    """PIL's decode alone, the loader with 0 (in the main process), 1 and 2 workers, and the loader reading the
    decoded cache with 1 worker, on the same files, interleaved."""
    data = {w: load_data(dataset(root, workers=w), str(cache), 0, torch.device("cpu")) for w in (0, 1, 2)}
    data["cache"] = load_data(dataset(root, workers=1, decoded_cache=True), str(cache), 0, torch.device("cpu"))
    no_resize = {k: None for k in PREPROCESSING}  # the files are 224 px already: decoded as they are
    data["decode_only"] = load_data(dataset(root, workers=1, **{**no_resize, "interpolation": "bilinear"}),
                                    str(cache), 0, torch.device("cpu"))
    part = {w: d.test.subset(torch.arange(images)) for w, d in data.items()}
    files = [Path(part[0].source.path(int(r))) for r in part[0].rows]
    pil, pil_resize, ours = [], [], {w: [] for w in part}
    for _ in range(rounds):  # interleaved: PIL, PIL with the preparation, then each loader, every round
        pil.append(pil_rate(files))
        pil_resize.append(pil_resize_rate(files))
        for w in part:
            ours[w].append(loader_rate(part[w], 64))
    out = {"images": images, "pil_decode_per_s": statistics.median(pil),
           "pil_decode_resize_crop_per_s": statistics.median(pil_resize)}
    names = {"cache": "loader_decoded_cache_1_worker_per_s", "decode_only": "loader_no_resize_1_worker_per_s"}
    for w, rates in ours.items():
        out[names.get(w, f"loader_{w}_workers_per_s")] = statistics.median(rates)
    out["per_worker_ratio_to_pil"] = out["loader_1_workers_per_s"] / out["pil_decode_per_s"]
    out["no_resize_per_worker_ratio_to_pil"] = out["loader_no_resize_1_worker_per_s"] / out["pil_decode_per_s"]
    out["per_worker_ratio_to_pil_with_resize"] = out["loader_1_workers_per_s"] / out["pil_decode_resize_crop_per_s"]
    out["workers_for_3000_per_s"] = int(np.ceil(3000 / out["loader_1_workers_per_s"]))
    return out


def measure_crafting(root: Path, images: int, passes: int, rounds: int, cache: Path) -> dict:
    """SGD-UAP on `images` training images: the crafting set read from the stream (decoded, then crafted on) against
    the same set already held as tensors."""
    data = load_data(dataset(root, workers=2), str(cache), 0, torch.device("cpu"))
    part = data.train.subset(torch.arange(images))
    cfg = attack_config("sgd_uap", eps=10 / 255, passes=passes, batch_size=64, crafting_images=images)
    model, held = tiny_model(), part.resident()
    streamed_s, resident_s = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fresh = part.resident()
        craft(model, fresh.float_x(), fresh.y, cfg, CLASSES, generator=torch.Generator().manual_seed(0))
        streamed_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        craft(model, held.float_x(), held.y, cfg, CLASSES, generator=torch.Generator().manual_seed(0))
        resident_s.append(time.perf_counter() - t0)
    s, r = statistics.median(streamed_s), statistics.median(resident_s)
    return {"images": images, "passes": passes, "streamed_seconds": s, "resident_seconds": r,
            "throughput_ratio": r / s}


def evaluate_child(root: str, cache: str, decoded_cache: bool) -> None:
    """One streamed evaluation of the whole test split (run in a child process, whose memory the parent reads): the
    split set up (listing, file check, decoded cache built where missing), one pass of the loader alone, then the
    evaluation's pass; `seconds` covers all three."""
    t0 = time.perf_counter()
    data = load_data(dataset(Path(root), workers=2, decoded_cache=decoded_cache), cache, 0, torch.device("cpu"))
    loaded = time.perf_counter() - t0
    t1 = time.perf_counter()
    read = sum(x.shape[0] for x, _ in data.test.shard(128, 0, 1))  # the loader alone
    read_seconds = time.perf_counter() - t1
    delta = torch.rand(3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) * 0.04
    metrics = evaluate_perturbation(tiny_model(), data.test.shard(128, 0, 1), None, delta, CLASSES, 128)
    assert read == metrics["num_images"]
    print(json.dumps({"images": metrics["num_images"], "load_seconds": loaded, "read_seconds": read_seconds,
                      "seconds": time.perf_counter() - t0}))


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(root: int) -> list[int]:
    """root and every process below it."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def measure_evaluation(root: Path, cache: Path, decoded_cache: bool) -> dict:
    """Wall time and peak PSS (the process and its workers, summed, sampled every 0.2 s) of evaluate_child."""
    cmd = [sys.executable, __file__, "--child", str(root), str(cache), str(int(decoded_cache))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(proc.pid)))
            stop.wait(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"evaluation child failed ({proc.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_pss_mib": round(peak[0] / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/stream_bench"))
    parser.add_argument("--sizes", default="20000,100000", help="test split sizes of the memory measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loader-images", type=int, default=2000)
    parser.add_argument("--craft-images", type=int, default=1000)
    parser.add_argument("--craft-passes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/stream_bench.json"))
    parser.add_argument("--only", default="loader,crafting,evaluation",
                        help="the parts to measure; the others are kept from an existing --out record")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        return evaluate_child(args.child[0], args.child[1], bool(int(args.child[2])))
    sizes = [int(s) for s in args.sizes.split(",")]
    roots = {n: generate(args.root / f"test{n}", n) for n in sizes}
    small = roots[sizes[0]]
    only = set(args.only.split(","))
    record = json.loads(args.out.read_text()) if args.out.is_file() and only != {"loader", "crafting", "evaluation"} \
        else {}
    record.update(machine={"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
                  preprocessing=PREPROCESSING)
    if "loader" in only:
        record["loader"] = measure_loader(small, args.loader_images, args.rounds, args.root / "cache_loader")
        print(json.dumps(record["loader"]), flush=True)
    if "crafting" in only:
        record["crafting"] = measure_crafting(small, args.craft_images, args.craft_passes, args.rounds,
                                              args.root / "cache_loader")
        print(json.dumps(record["crafting"]), flush=True)
    if "evaluation" in only:
        record["evaluation"] = []
        for n, root in roots.items():
            cache = args.root / f"cache_eval{n}"
            for label, on in (("cache off", False), ("cache on, first", True), ("cache on, second", True)):
                row = {"test_images": n, "decoded_size_gib": round(n * 3 * SIDE * SIDE / 2**30, 2), "run": label,
                       **measure_evaluation(root, cache, on)}
                record["evaluation"].append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
