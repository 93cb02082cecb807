#!/usr/bin/env bash
# GPU check, at most 8 minutes on one H100 (75 s more with the ImageNet stage): CIFAR-10 ResNet-20 (the setting
# cifar10_resnet20_eps8 with fewer epochs) trained naturally, with UAT and with CB-UAT (bf16 autocast, channels-last,
# device-resident data), each attacked white-box by every attack at 8/255 (task=pipeline), plus the throughput of
# training and crafting (scripts/bench.py) and the fraction of the card's bf16 peak it implies. Prints the wall time of every
# stage. With IMAGENET_ROOT set and ResNet-50's IMAGENET1K_V1 weights in torch's hub cache, also one short run of
# the Table 1 protocol (table=uap_imagenet: SGD-UAP against ResNet-50, L-inf xi = 10) on 1,000 validation images, its
# crafting set one training image per class (75 s more); otherwise one line says why that stage is skipped.
# Writes docs/results/gpu/: bench.json, gpu_check.json, throughput.md, defences.{md,csv,tex} + figures,
# records/<defence>/, imagenet/ (the ImageNet stage's record and attacks table) and gpu_check.log (runs themselves
# under outputs/gpu_check/<time>/). Never downloads.
#
#   scripts/gpu_check.sh <cifar10 dir>           # or CIFAR10_ROOT=<dir> scripts/gpu_check.sh
#   GPU_CHECK_SMOKE=1 scripts/gpu_check.sh       # CPU, tiny sizes, into a temporary directory
#
# <cifar10 dir>: train/<class>/*.jpg|png and test/<class>/... image folders, or torchvision's cifar-10-batches-py/.
# IMAGENET_ROOT (optional): ILSVRC2012 with train/<wnid>/ and val/<wnid>/ (or test/<wnid>/) class folders; the stage
# links 2 training images and 1 validation image of each class and runs table=uap_imagenet (dataset=imagenet) on them.
# Environment: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_BUDGET_S (the whole script: 480, plus 75
# with the ImageNet stage; smoke 1200),
# GPU_CHECK_EPOCHS (default: as many as the measured training rate fits in ~150 s, 2-30, the same for all three),
# GPU_CHECK_PEAK_TFLOPS (default: bench.py's table; H100 SXM bf16 dense 989.4), GPU_CHECK_OUT (smoke output dir).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package, installed or not
die() { echo "gpu_check: $*" >&2; exit 1; }

PY=${PYTHON:-}
if [[ -z $PY ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
SMOKE=${GPU_CHECK_SMOKE:-0}
IMAGENET=${IMAGENET_ROOT:-}
IMAGENET_S=0  # the ImageNet stage's time limit, when it runs
IMAGENET_SKIP=""
if [[ $SMOKE == 1 ]]; then
  IMAGENET_SKIP="the CPU smoke test has no ImageNet stage"
elif [[ -z $IMAGENET ]]; then
  IMAGENET_SKIP="IMAGENET_ROOT is not set"
elif [[ ! -d $IMAGENET/train || ! ( -d $IMAGENET/val || -d $IMAGENET/test ) ]]; then
  IMAGENET_SKIP="no train/ and val/ (or test/) class folders under IMAGENET_ROOT=$IMAGENET"
elif ! WEIGHTS=$("$PY" -c 'import sys
from torchvision.models import ResNet50_Weights
from cbuap_runner.models.sources import hub_file
path = hub_file(ResNet50_Weights.IMAGENET1K_V1.url)
print(path)
sys.exit(0 if path.is_file() else 1)' 2>/dev/null); then
  IMAGENET_SKIP="ResNet-50's IMAGENET1K_V1 weights are not in torch's hub cache${WEIGHTS:+ ($WEIGHTS)}"
else
  IMAGENET_S=75
fi
if [[ $SMOKE == 1 ]]; then BUDGET_S=${GPU_CHECK_BUDGET_S:-1200}; else BUDGET_S=${GPU_CHECK_BUDGET_S:-$((480 + IMAGENET_S))}; fi
ROOT=${1:-${CIFAR10_ROOT:-}}
STAMP=$(date -u +%Y-%m-%d_%H-%M-%S)

has_cifar10() {  # an image-folder layout or torchvision's
  [[ -d $1/train && -d $1/test ]] || [[ -f $1/cifar-10-batches-py/data_batch_1 && -f $1/cifar-10-batches-py/test_batch ]]
}

# ---------------------------------------------------------------- preflight: fail fast, one line
"$PY" -c 'import cbuap_runner.__main__, torch' 2>/dev/null || die "$PY cannot import torch and cbuap_runner (and its dependencies); set PYTHON or install the package"
if [[ $SMOKE == 1 ]]; then
  OUT=${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
  RUNS=$OUT/runs
  DEVICE=cpu
else
  [[ -n $ROOT ]] || die "no CIFAR-10 directory given: pass it as the first argument or set CIFAR10_ROOT"
  has_cifar10 "$ROOT" || die "no CIFAR-10 at $ROOT: expected train/<class>/ and test/<class>/ image folders or cifar-10-batches-py/"
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || die "CUDA is not available to $PY (torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')); run on a GPU machine, or GPU_CHECK_SMOKE=1 for the CPU smoke test"
  OUT=docs/results/gpu
  RUNS=outputs/gpu_check/$STAMP
  DEVICE=cuda
fi
mkdir -p "$OUT" "$RUNS"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [[ $SMOKE == 1 && -z $ROOT ]]; then  # a tiny random image-folder CIFAR-10 (5,300 train images: bench.py keeps 5,000 for validation)
  ROOT=$OUT/cifar10_fake
  "$PY" - "$ROOT" <<'EOF'
import sys
from pathlib import Path

import torch
from torchvision.io import write_png

g = torch.Generator().manual_seed(0)
for split, per_class in (("train", 530), ("test", 20)):
    for k in range(10):
        folder = Path(sys.argv[1]) / split / f"class{k}"
        folder.mkdir(parents=True, exist_ok=True)
        base = torch.randint(0, 256, (3, 1, 1), generator=g)
        for i in range(per_class):
            noise = torch.randint(-60, 61, (3, 32, 32), generator=g)
            write_png((base + noise).clamp(0, 255).to(torch.uint8), str(folder / f"{i}.png"))
EOF
fi
export CIFAR10_ROOT=$ROOT

if [[ $SMOKE == 1 ]]; then
  RUN_SIZE=(dataset.val_size=100 dataset.train_subset=256 training.batch_size=32 attack.crafting_images=16
            attack.passes=1 attack.batch_size=16 attack.deepfool.iters=3 attack.deepfool.candidates=3
            eval.num_images=100)
  POOL_SIZE=(training.pool.refresh_unit=epoch training.pool.refresh_steps=2)  # cb_uat only: a defence refuses keys it does not read
  BENCH_SIZE=(--batch 32 --seconds 0.5 --craft-images 128)
  N_TRAIN=256
else
  # crafting budget of this check, set by DeepFool UAP (one DeepFool run per unfooled image, not batched; the
  # paper tables use the defaults: 5,000 images, 10 passes)
  RUN_SIZE=(attack.crafting_images=1000 attack.passes=3)
  POOL_SIZE=()
  BENCH_SIZE=(--batch 128 --seconds 3 --craft-images 2048)
  N_TRAIN=45000  # 50,000 less the 5,000 validation images
fi
PEAK=()
if [[ -n ${GPU_CHECK_PEAK_TFLOPS:-} ]]; then PEAK=(--peak-tflops "$GPU_CHECK_PEAK_TFLOPS"); fi

echo "gpu_check: device=$DEVICE data=$ROOT runs=$RUNS out=$OUT budget=${BUDGET_S}s ($(date -u +%H:%M:%S) UTC)"
declare -A STAGE_S
stage_done() {  # name, start second
  STAGE_S[$1]=$((SECONDS - $2))
  echo "gpu_check: stage $1 took ${STAGE_S[$1]} s (total ${SECONDS} s of ${BUDGET_S} s)"
}

# ---------------------------------------------------------------- stage 1: throughput
t=$SECONDS
"$PY" scripts/bench.py --models resnet20 --dataset cifar10 --root "$ROOT" --device "$DEVICE" --amp --channels-last \
  --only craft,train --rounds 1 "${BENCH_SIZE[@]}" "${PEAK[@]}" --out "$(realpath "$OUT")/bench.json"
stage_done bench "$t"

# epochs: what the measured natural training rate fits in ~150 s for all three defences together
if [[ -n ${GPU_CHECK_EPOCHS:-} ]]; then
  EPOCHS=$GPU_CHECK_EPOCHS
elif [[ $SMOKE == 1 ]]; then
  EPOCHS=1
else
  EPOCHS=$("$PY" - "$OUT/bench.json" "$N_TRAIN" <<'EOF'
import json
import sys

rate = json.load(open(sys.argv[1]))["models"][0]["natural_train_img_s"]
# relative epoch cost: natural 1, UAT ~2 (a frozen forward + backward to the input per batch for delta), CB-UAT
# ~1.5 (pool refreshes); x1.3 for augmentation, validation and what the bench's loop leaves out
seconds_per_epoch = int(sys.argv[2]) / rate * (1 + 2.0 + 1.5) * 1.3
print(max(2, min(30, int(150 / seconds_per_epoch))))
EOF
)
fi
echo "gpu_check: $EPOCHS epochs per defence"

# ---------------------------------------------------------------- stages 2-4: train, then attack white-box
DEFENCES=(natural uat cb_uat)
for i in "${!DEFENCES[@]}"; do
  d=${DEFENCES[$i]}
  later=$((${#DEFENCES[@]} - i - 1))
  limit=$((BUDGET_S - SECONDS - 20 - IMAGENET_S - 90 * later))  # leave each later stage 90 s, ImageNet its own, the tables 20 s
  ((limit >= 30)) || limit=30
  extra=()
  if [[ $d == cb_uat ]]; then extra=("${POOL_SIZE[@]}"); fi
  t=$SECONDS
  echo "gpu_check: stage $d (limit ${limit} s)"
  timeout -s INT -k 15 "$limit" "$PY" -m cbuap_runner task=pipeline +table/setting=cifar10_resnet20_eps8 \
    training="$d" training.epochs="$EPOCHS" training.amp=true model.channels_last=true device="$DEVICE" \
    progress=off resume=false seed=0 hydra.run.dir="$RUNS/$d" "${RUN_SIZE[@]}" "${extra[@]}" \
    || echo "gpu_check: stage $d failed or ran out of time (exit $?); its record says which"
  stage_done "$d" "$t"
done

# ---------------------------------------------------------------- stage 5: Table 1's protocol on an ImageNet subset
if [[ -n $IMAGENET_SKIP ]]; then
  echo "gpu_check: stage imagenet skipped: $IMAGENET_SKIP"
else
  t=$SECONDS
  echo "gpu_check: stage imagenet (limit ${IMAGENET_S} s)"
  SUBSET=$RUNS/imagenet_subset  # links to 2 training images per class (validation, crafting) and 1 test image
  "$PY" - "$IMAGENET" "$SUBSET" <<'EOF'
import sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
val = src / "val" if (src / "val").is_dir() else src / "test"
for split, folders, per_class in (("train", src / "train", 2), ("test", val, 1)):
    for folder in sorted(p for p in folders.iterdir() if p.is_dir()):
        (dst / split / folder.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(f for f in folder.iterdir() if f.is_file())[:per_class]:
            (dst / split / folder.name / f.name).symlink_to(f.resolve())
EOF
  JOB=resnet50_sgd_uap_linf
  IMAGENET_ROOT=$SUBSET timeout -s INT -k 15 "$IMAGENET_S" "$PY" -m cbuap_runner table=uap_imagenet \
    +table/setting=imagenet_linf10 model.arch=resnet50 attack=sgd_uap attack.crafting_per_class=1 attack.passes=3 \
    eval.num_images=1000 device="$DEVICE" progress=off resume=false seed=0 cache_dir="$RUNS/cache" \
    hydra.sweep.dir="$RUNS/imagenet" hydra.sweep.subdir=$JOB \
    || echo "gpu_check: stage imagenet failed or ran out of time (exit $?); its record says which"
  rm -rf "$OUT/imagenet"
  mkdir -p "$OUT/imagenet/records/$JOB"
  for f in run_summary.json metrics.jsonl error.txt; do
    if [[ -f $RUNS/imagenet/$JOB/$f ]]; then cp "$RUNS/imagenet/$JOB/$f" "$OUT/imagenet/records/$JOB/"; fi
  done
  "$PY" scripts/make_tables.py "$OUT/imagenet/records" --kind attacks --out "$OUT/imagenet" --no-figures \
    || echo "gpu_check: no ImageNet table (exit $?)"
  stage_done imagenet "$t"
fi

# ---------------------------------------------------------------- tables and the summary
t=$SECONDS
rm -rf "$OUT/records"
for d in "${DEFENCES[@]}"; do
  mkdir -p "$OUT/records/$d"
  for f in run_summary.json metrics.jsonl error.txt; do
    if [[ -f $RUNS/$d/$f ]]; then cp "$RUNS/$d/$f" "$OUT/records/$d/"; fi
  done
done
"$PY" scripts/make_tables.py "$OUT/records" --kind defences --out "$OUT"
STAGES=$(for k in "${!STAGE_S[@]}"; do printf '%s=%s ' "$k" "${STAGE_S[$k]}"; done)
"$PY" - "$OUT" "$EPOCHS" "$N_TRAIN" "$SECONDS" "$STAGES" <<'EOF'
import json
import sys
from pathlib import Path

out, epochs, n_train, total, stages = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
bench = json.loads((out / "bench.json").read_text())
row = bench["models"][0]
peak, fwd = bench.get("peak_tflops"), row["forward_gflops_per_image"] * 1e9
summary = {"device": bench["device"], "torch": bench["torch"], "epochs": epochs, "train_images_per_epoch": n_train,
           "stage_seconds": {k: int(v) for k, v in (s.split("=") for s in stages.split())}, "total_seconds": total,
           "peak_tflops": peak, "bench": row, "runs": {}}
lines = ["| what | images/s | TFLOP/s | fraction of bf16 peak |", "|---|---|---|---|"]


def line(what, rate, flops_per_image):
    tflops = rate * flops_per_image / 1e12
    frac = f"{tflops / peak:.4f}" if peak else "n/a"
    lines.append(f"| {what} | {rate:,.0f} | {tflops:.2f} | {frac} |")


line("bench: natural training step (3 x forward FLOPs)", row["natural_train_img_s"], 3 * fwd)
line("bench: raw forward+backward to the input (2 x)", row["raw_fwd_bwd_input_img_s"], 2 * fwd)
line("bench: SGD-UAP crafting loop (2 x)", row["crafting_img_s"], 2 * fwd)
for d in ("natural", "uat", "cb_uat"):
    path = out / "records" / d / "run_summary.json"
    if not path.is_file():
        continue
    rec = json.loads(path.read_text())
    m = rec.get("metrics") or {}
    batch = rec["config"]["training"]["batch_size"]
    run = {"status": rec.get("status"), "wall_seconds": rec.get("wall_seconds"), "train_seconds": m.get("train_seconds"),
           "clean_acc": m.get("clean_acc"), "worst_adv_acc": m.get("worst_adv_acc")}
    if m.get("train_seconds"):
        run["train_img_s"] = round(epochs * (n_train // batch) * batch / m["train_seconds"], 1)
        line(f"run: {d} training, whole epochs ({'3 x' if d == 'natural' else 'natural-equivalent 3 x'})",
             run["train_img_s"], 3 * fwd)
    for name, a in (m.get("attacks") or {}).items():
        run[f"{name}_craft_seconds"] = a.get("craft_seconds")
        run[f"{name}_craft_img_s"] = a.get("craft_images_per_second")
        if a.get("craft_images_per_second") and name != "uap":
            line(f"run: {name} crafting against {d} (2 x)", a["craft_images_per_second"], 2 * fwd)
    summary["runs"][d] = run
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
head = (f"# GPU check throughput\n\n{bench['device']}, torch {bench['torch']}, bf16 autocast {bench['amp']}, channels-last "
        f"{bench['channels_last']}; ResNet-20 forward {row['forward_gflops_per_image']} GFLOP/image (FlopCounterMode); "
        f"peak {peak} TFLOP/s; {epochs} epochs per defence; stages (s): {summary['stage_seconds']}, total {total} s.\n\n")
(out / "throughput.md").write_text(head + "\n".join(lines) + "\n")
print(head + "\n".join(lines))
EOF
stage_done tables "$t"
echo "gpu_check: done in ${SECONDS} s; wrote $OUT"
