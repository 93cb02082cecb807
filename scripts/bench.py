"""Performance suite: prints a table and writes a JSON record (default outputs/bench.json).

Per model and device: raw forward+backward-to-input throughput, UAP crafting throughput and its ratio to
the raw figure, natural training throughput, each defence's epoch time relative to natural training, peak
memory, and (with the `crosscheck` extra installed) ART's UniversalPerturbation on the same model, ε and
images. All ratios come from one run of this script on one machine.

    python scripts/bench.py                                   # small_cnn + resnet20, CPU-sized
    python scripts/bench.py --models resnet18 --dataset cifar10 --device cuda --amp
    python scripts/bench.py --models torchvision:resnet50 --dataset synthetic224 --only craft --batch 16 \
        --craft-images 32 --rounds 2 --out outputs/bench_resnet50.json
    python scripts/bench.py --only craft,defences --defence-images 1024
    python scripts/bench.py --models resnet20 --dataset cifar10 --root <cifar10> --device cuda --amp \
        --channels-last --only craft,train --out docs/results/gpu/bench.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cbuap_runner.attacks import attack_config, craft
from cbuap_runner.attacks.deepfool_uap import DeepFoolConfig
from cbuap_runner.data import DataBundle, balanced_subset, load_data
from cbuap_runner.data.synthetic import SyntheticConfig
from cbuap_runner.metrics import evaluate_perturbation
from cbuap_runner.models import build_model, load_model, prepare
from cbuap_runner.models.sources import SourceContext, TorchvisionConfig, load_torchvision
from cbuap_runner.record import RunRecord
from cbuap_runner.schema import AttackConfig, DatasetConfig, TrainingConfig
from cbuap_runner.training import DEFENCES, make_adversary
from cbuap_runner.training.loop import TrainingRun, fit

REPO = Path(__file__).resolve().parents[1]
DATASETS = {  # shapes and statistics of the configs in conf/dataset
    "fashion_mnist": dict(num_classes=10, channels=1, image_size=28, mean=[0.2860], std=[0.3530], eps=0.2,
                          root="data/fashion_mnist"),
    "cifar10": dict(num_classes=10, channels=3, image_size=32, mean=[0.4914, 0.4822, 0.4465],
                    std=[0.2470, 0.2435, 0.2616], eps=8 / 255, root="data/cifar10", crop_padding=4, hflip=True),
    # ImageNet-sized generated images (throughput only: random pixels, 10 classes)
    "synthetic224": dict(num_classes=10, channels=3, image_size=224, mean=[0.485, 0.456, 0.406],
                         std=[0.229, 0.224, 0.225], eps=10 / 255, root="unused", synthetic_size=320, val_size=32),
}


# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring, most specific first
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
                    ("A100", 312.0))


def peak_tflops(device: torch.device, given: float | None, amp: bool) -> float | None:
    if given is not None or device.type != "cuda" or not amp:  # the table holds bf16 peaks only
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def forward_flops_per_image(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add) of one forward pass per image, counted by FlopCounterMode on two images.

    Training (forward + backward to the weights and activations) costs about 3x this, crafting (forward +
    backward to the input only, parameters frozen) 2x: FlopCounterMode counts 2.99x and 2.00x for resnet20.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:2])
    model.train(was_training)
    return counter.get_total_flops() / x[:2].shape[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rate(step: Callable[[], int], device: torch.device, seconds: float, warmup: int = 2) -> float:
    """Images per second of `step` (which returns the images it processed), run for about `seconds`."""
    for _ in range(warmup):
        step()
    sync(device)
    t0, images = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        images += step()
    sync(device)
    return images / (time.perf_counter() - t0)


def raw_input_gradient_rate(model, x, y, device, seconds, amp) -> float:
    """The ceiling for crafting: forward + backward to the input only, parameters frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()

    def step() -> int:
        xb = x.clone().requires_grad_(True)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
            loss = F.cross_entropy(model(xb), y)
        torch.autograd.grad(loss, xb)
        return x.shape[0]

    rate = timed_rate(step, device, seconds)
    for p in model.parameters():
        p.requires_grad_(True)
    return rate


def crafting_rate(model, data: DataBundle, eps: float, batch: int, images: int, device,
                  passes: int = AttackConfig.passes) -> tuple[float, dict]:
    """SGD-UAP crafting throughput: images through a whole crafting run per second (the default budget of
    passes, one forward of the clean crafting images for the fooling statistics included)."""
    crafting = data.train.subset(balanced_subset(data.train.y, images, 0))
    cfg = attack_config("sgd_uap", eps=eps, passes=passes, batch_size=batch, crafting_images=None, tol=0.0)
    x = crafting.float_x()
    craft(model, x[: batch * 2], crafting.y[: batch * 2], dataclasses.replace(cfg, passes=1), data.num_classes)
    sync(device)
    t0 = time.perf_counter()
    result = craft(model, x, crafting.y, cfg, data.num_classes, generator=torch.Generator().manual_seed(0))
    sync(device)
    seconds = time.perf_counter() - t0
    return result.images_processed / seconds, {"delta": result.delta, "seconds": seconds}


def natural_training_rate(model, x, y, device, seconds, amp) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> int:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return x.shape[0]

    return timed_rate(step, device, seconds)


def defence_epoch_times(name: str, data: DataBundle, dataset_cfg: DatasetConfig, batch: int, images: int, device,
                        defences: list[str], amp: bool) -> dict[str, float]:
    """Seconds of one training epoch on `images` training images, per defence (conf/training defaults)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from cbuap_runner.__main__ import CONF_DIR
    from cbuap_runner.schema import register_configs

    register_configs()
    def head(split):  # the first 512 images: what an epoch's evaluation costs stays small
        return split.subset(torch.arange(min(len(split), 512), device=split.y.device))

    subset = dataclasses.replace(data, train=data.train.subset(balanced_subset(data.train.y, images, 0)),
                                 val=head(data.val), test=head(data.test))
    times = {}
    for defence in defences:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            node = compose("config", overrides=[f"training={defence}", "training.epochs=1",
                                                f"training.batch_size={batch}", f"dataset.eps={dataset_cfg.eps}"])
        tcfg: TrainingConfig = OmegaConf.to_object(node).training
        tcfg = dataclasses.replace(tcfg, amp=amp)
        torch.manual_seed(0)
        model = build_model(name, data.num_classes, data.input_shape, dataset_cfg.mean, dataset_cfg.std).to(device)
        adversary = make_adversary(defence, tcfg, data.num_classes, data.input_shape, device)
        with tempfile_dir() as tmp:
            result = fit(model, adversary, subset, dataset_cfg, tcfg, TrainingRun(RunRecord(tmp), 0, device, lambda row: None, {}))
        times[defence] = result["train_seconds"]
    return times


class tempfile_dir:
    def __enter__(self) -> Path:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory()
        return Path(self._tmp.name)

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()


def _timed_craft(model, x, y, cfg: AttackConfig, num_classes: int, device) -> tuple[Any, float]:
    """Our crafting run on (x, y) with seed 0 and its wall time."""
    sync(device)
    t0 = time.perf_counter()
    result = craft(model, x, y, cfg, num_classes, generator=torch.Generator().manual_seed(0))
    sync(device)
    return result, time.perf_counter() - t0


def _test_fooling_rate(model, data: DataBundle, delta: torch.Tensor) -> float:
    return round(evaluate_perturbation(model, data.test.x, data.test.y, delta, data.num_classes)["fooling_rate"], 4)


def art_comparison(model, data: DataBundle, eps: float, images: int, device, ours_batch: int,
                   inner: tuple[str, ...] = ("deepfool", "fgsm"), passes: int = 10, norm: str = "linf") -> dict[str, Any]:
    """ART's UniversalPerturbation against ours on the same model, crafting images, ε, norm and passes.

    deepfool: ART with attacker="deepfool" (DeepFool max_iter 10, overshoot 0.02, 10 candidate classes) against
    our reference `uap` (the same DeepFool settings); fgsm: ART with attacker="fgsm". Our SGD-UAP runs on the same
    images alongside. Neither side stops early: ours has no stopping rule set and ART gets delta = 0 (it stops only
    once every crafting image is fooled, after which no pass can change its perturbation, nor ours).
    """
    try:
        import random

        import numpy as np
        from art.attacks.evasion import UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return {"skipped": "adversarial-robustness-toolbox not installed (pip install -e '.[crosscheck]')"}
    crafting = data.train.subset(balanced_subset(data.train.y, images, 0))
    x, y = crafting.float_x(), crafting.y
    classifier = PyTorchClassifier(model=model.eval(), loss=torch.nn.CrossEntropyLoss(), input_shape=data.input_shape,
                                   nb_classes=data.num_classes, clip_values=(0.0, 1.0),
                                   device_type="gpu" if device.type == "cuda" else "cpu")
    art_norm = np.inf if norm == "linf" else 2
    out: dict[str, Any] = {"settings": f"{images} crafting images, {passes} passes, eps {eps:g} ({norm}), "
                                       f"test fooling rate on {len(data.test)} test images"}
    arts = {"deepfool": ("art_uap_deepfool", {"max_iter": 10, "epsilon": 0.02, "nb_grads": 10, "verbose": False}),
            "fgsm": ("art_uap_fgsm", {"eps": eps / 10, "norm": art_norm})}
    ours = {"deepfool": ("ours_uap", "uap"), "fgsm": ("ours_sgd_uap", "sgd_uap")}
    for attacker in inner:
        key, params = arts[attacker]
        random.seed(0)  # ART shuffles with Python's random
        attack = UniversalPerturbation(classifier, attacker=attacker, attacker_params=params, delta=0.0, max_iter=passes,
                                       eps=eps, norm=art_norm, batch_size=ours_batch, verbose=False)
        t0 = time.perf_counter()
        attack.generate(x.cpu().numpy())
        seconds = time.perf_counter() - t0
        delta = torch.from_numpy(attack.noise[0]).float().to(device)
        out[key] = {"seconds": round(seconds, 3), "test_fooling_rate": _test_fooling_rate(model, data, delta),
                    "crafting_fooling_rate": round(float(attack.fooling_rate), 4)}
    runs = [ours[attacker] for attacker in dict.fromkeys([*inner, "fgsm"])]  # our SGD-UAP always runs alongside
    if "deepfool" in inner:  # and the relaxed batching of our DeepFool UAP
        runs.append(("ours_uap_relaxed", "uap"))
    for key, name in runs:
        own = {"deepfool": DeepFoolConfig(batching="relaxed" if key.endswith("relaxed") else "exact")} if name == "uap" else {}
        cfg = attack_config(name, eps=eps, norm=norm, passes=passes, batch_size=ours_batch, crafting_images=None, **own)
        result, seconds = _timed_craft(model, x, y, cfg, data.num_classes, device)
        out[key] = {"seconds": round(seconds, 3), "test_fooling_rate": _test_fooling_rate(model, data, result.delta),
                    "crafting_fooling_rate": round(result.history[-1]["fooling_rate"], 4)}
    for attacker in inner:
        art_key, ours_key = arts[attacker][0], ours[attacker][0]
        out[f"speedup_{ours_key}_vs_{art_key}"] = round(out[art_key]["seconds"] / out[ours_key]["seconds"], 1)
    if "deepfool" in inner:
        art = out["art_uap_deepfool"]["seconds"]
        out["speedup_ours_uap_relaxed_vs_art_uap_deepfool"] = round(art / out["ours_uap_relaxed"]["seconds"], 1)
        for key in ("ours_uap", "ours_uap_relaxed"):
            out[f"{key}_over_ours_sgd_uap_seconds"] = round(out[key]["seconds"] / out["ours_sgd_uap"]["seconds"], 1)
    return out


def cost_curves(data: DataBundle, dataset_cfg: DatasetConfig, batch: int, device, sizes: list[int],
                models: list[str]) -> dict[str, Any]:
    """Seconds of one SGD-UAP crafting pass against the crafting-set size and against the model size."""
    def one_pass(model_name: str, n: int) -> float:
        torch.manual_seed(0)
        model = build_model(model_name, data.num_classes, data.input_shape, dataset_cfg.mean, dataset_cfg.std).to(device)
        _, info = crafting_rate(model, data, dataset_cfg.eps, batch, n, device, passes=1)
        return round(info["seconds"], 3)

    by_size = {n: one_pass(models[0], n) for n in sizes}
    by_model = {}
    for name in models:
        params = sum(p.numel() for p in build_model(name, data.num_classes, data.input_shape).parameters())
        by_model[name] = {"parameters": params, "seconds": one_pass(name, sizes[0])}
    return {"craft_seconds_by_images": by_size, "model": models[0], "craft_seconds_by_model": by_model,
            "images_for_model_curve": sizes[0]}


def main_job_figures() -> dict[str, Any]:
    """Wall time and peak memory of the default main job (what `make run` runs), in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cbuap_runner", "progress=off", "hydra.run.dir=outputs/bench_main_job",
                           "cache_dir=outputs/bench_cache"], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"returncode": proc.returncode, "wall_seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb, 1),
            "note": "includes training the natural model when outputs/bench_cache has none"}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def crafting_figures(model, args, data: DataBundle, dataset_cfg: DatasetConfig, x, y, device) -> dict[str, Any]:
    """Raw and crafting throughput in interleaved rounds (medians); with --compile also for a torch.compile'd copy
    of the model, in the same rounds, so that load on a shared machine hits every figure alike."""
    variants = {"": model}
    if args.compile:
        variants["compiled_"] = copy.deepcopy(model)
        variants["compiled_"].compile()
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for prefix, m in variants.items():
            rates.setdefault(f"{prefix}raw_fwd_bwd_input_img_s", []).append(
                raw_input_gradient_rate(m, x, y, device, args.seconds, args.amp))
            rates.setdefault(f"{prefix}crafting_img_s", []).append(
                crafting_rate(m, data, dataset_cfg.eps, args.batch, args.craft_images, device)[0])
    out: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    for prefix in variants:
        out[f"{prefix}crafting_over_raw"] = round(out[f"{prefix}crafting_img_s"] / out[f"{prefix}raw_fwd_bwd_input_img_s"], 3)
    if args.compile:
        out["compiled_over_eager_crafting"] = round(out["compiled_crafting_img_s"] / out["crafting_img_s"], 3)
    return out


def network(name: str, data: DataBundle, dataset_cfg: DatasetConfig, device) -> torch.nn.Module:
    """An in-house architecture, or `torchvision:<arch>` (a torchvision classifier, seeded random weights)."""
    torch.manual_seed(0)
    if name.startswith("torchvision:"):
        cfg = TorchvisionConfig(name="torchvision", arch=name.partition(":")[2], weights=None)
        context = SourceContext(data.num_classes, list(dataset_cfg.mean), list(dataset_cfg.std), seed=0)
        return load_torchvision(cfg, context).model.to(device)
    return build_model(name, data.num_classes, data.input_shape, dataset_cfg.mean, dataset_cfg.std).to(device)


def bench_model(name: str, args, data: DataBundle, dataset_cfg: DatasetConfig, device) -> dict[str, Any]:
    model = network(name, data, dataset_cfg, device)
    if args.checkpoint and name == args.models.split(",")[0]:  # trained weights: meaningful fooling rates
        model = load_model(args.checkpoint, device).train()
    if args.channels_last:  # as the runs apply model.channels_last: the weights and each input batch
        model = prepare(model, channels_last=True)
    batch = data.train.subset(torch.arange(args.batch, device=data.train.y.device))
    x, y = batch.float_x(), batch.y
    row: dict[str, Any] = {"model": name}
    fwd = forward_flops_per_image(model, x)
    row["forward_gflops_per_image"] = round(fwd / 1e9, 4)
    if "craft" in args.only:
        row.update(crafting_figures(model, args, data, dataset_cfg, x, y, device))
    if "train" in args.only:
        row["natural_train_img_s"] = round(natural_training_rate(model, x, y, device, args.seconds, args.amp), 1)
    for key, per_image in (("raw_fwd_bwd_input", 2), ("crafting", 2), ("natural_train", 3)):
        if f"{key}_img_s" in row:  # achieved TFLOP/s and the fraction of the peak it implies
            tflops = row[f"{key}_img_s"] * per_image * fwd / 1e12
            row[f"{key}_tflops"] = round(tflops, 3)
            if args.peak_tflops:
                row[f"{key}_peak_fraction"] = round(tflops / args.peak_tflops, 5)
    if "defences" in args.only:
        times = defence_epoch_times(name, data, dataset_cfg, args.batch, args.defence_images, device, args.defences, args.amp)
        row["defence_epoch_seconds"] = {k: round(v, 3) for k, v in times.items()}
        row["defence_cost_vs_natural"] = {k: round(v / times["natural"], 2) for k, v in times.items()}
    if "art" in args.only:
        row["art"] = art_comparison(model.eval(), data, args.art_eps or dataset_cfg.eps, args.art_images, device, args.batch,
                                    tuple(args.art_inner.split(",")), args.art_passes, args.art_norm)
    row["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    return row


def print_table(record: dict[str, Any]) -> None:
    print(f"\ndevice: {record['device']}  threads: {record['threads']}  dataset: {record['dataset']}")
    for row in record["models"]:
        print(f"\n== {row['model']}")
        for key, value in row.items():
            if key == "model":
                continue
            if isinstance(value, dict):
                print(f"  {key}:")
                runs = {k: v for k, v in value.items() if isinstance(v, dict)}
                if runs:  # side by side: the ART comparison
                    print(f"    {'':28s} {'seconds':>10s} {'test FR':>9s} {'crafting FR':>12s}")
                    for k, v in runs.items():
                        print(f"    {k:28s} {v['seconds']:10.2f} {v['test_fooling_rate']:9.4f} {v['crafting_fooling_rate']:12.4f}")
                for k, v in value.items():
                    if k not in runs:
                        print(f"    {k:28s} {v}")
            else:
                print(f"  {key:30s} {value}")
    if "curves" in record:
        print(f"\n== cost curves: {json.dumps(record['curves'])}")
    if "main_job" in record:
        print(f"\n== default main job: {record['main_job']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="small_cnn,resnet20")
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    p.add_argument("--root", default=None, help="dataset root (default: the dataset config's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=5.0, help="timing window of each throughput figure")
    p.add_argument("--craft-images", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the raw and crafting figures")
    p.add_argument("--defence-images", type=int, default=2048)
    p.add_argument("--defences", default=",".join(DEFENCES))
    p.add_argument("--checkpoint", default=None, help="a trained model.pt of the first --models entry (ART comparison)")
    p.add_argument("--art-images", type=int, default=1000)
    p.add_argument("--art-inner", default="deepfool,fgsm",
                   help="ART inner attacks: deepfool (against our uap), fgsm (against our sgd_uap, which always runs)")
    p.add_argument("--art-passes", type=int, default=10, help="passes over the crafting images, both sides (ART max_iter)")
    p.add_argument("--art-norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--art-eps", type=float, default=None, help="the budget of the ART comparison (default: the dataset's)")
    p.add_argument("--only", default="craft,train,defences,art,curves,main_job",
                   help="comma list of: craft, train, defences, art, curves, main_job")
    p.add_argument("--curve-sizes", default="512,1024,2048,4096", help="crafting-set sizes of the cost curve")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="also measure a torch.compile'd model (raw and crafting)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak in TFLOP/s for the *_peak_fraction figures (default: known for "
                        "H100/H200/A100 bf16; none on other devices)")
    p.add_argument("--out", default="outputs/bench.json")
    args = p.parse_args(argv)
    args.only = set(args.only.split(","))
    args.defences = [d for d in args.defences.split(",") if d]
    if "natural" not in args.defences:
        args.defences.insert(0, "natural")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    spec = dict(DATASETS[args.dataset])
    if args.root:
        spec["root"] = args.root
    if "synthetic_size" in spec:
        dataset_cfg = SyntheticConfig(name="synthetic", download=False, **spec)
    else:
        dataset_cfg = DatasetConfig(name=args.dataset, download=False, **spec)
    data = load_data(dataset_cfg, "outputs/cache", 0, device)
    args.peak_tflops = peak_tflops(device, args.peak_tflops, args.amp)
    record: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(), "dataset": args.dataset, "batch": args.batch, "amp": args.amp,
        "channels_last": args.channels_last, "peak_tflops": args.peak_tflops, "torch": torch.__version__, "models": [],
    }
    if args.only & {"craft", "train", "defences", "art"}:
        for name in args.models.split(","):
            record["models"].append(bench_model(name, args, data, dataset_cfg, device))
    if "curves" in args.only:
        record["curves"] = cost_curves(data, dataset_cfg, args.batch, device, [int(v) for v in args.curve_sizes.split(",")],
                                       args.models.split(","))
    if "main_job" in args.only:
        record["main_job"] = main_job_figures()
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print_table(record)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
