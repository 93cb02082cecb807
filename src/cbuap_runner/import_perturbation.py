"""Import a published universal perturbation (.npy, .mat) as a perturbation.pt that `task=evaluate` scores.

    python -m cbuap_runner.import_perturbation VGG-16.mat --out vgg16.pt [--layout whc|hwc|chw]
        [--channel-order rgb|bgr] [--scale 255] [--variable r] [--network VGG-16] [--norm linf|l2]
        [--resize 256] [--crop 224] [--interpolation bilinear]

Made for the perturbations of S. Moosavi-Dezfooli, A. Fawzi, O. Fawzi, P. Frossard, "Universal adversarial
perturbations", CVPR 2017 (arXiv:1610.08401), published with their code at https://github.com/LTS4/universal.
What that repository says of them (read at commit 2e5ab15):

- precomputed/{CaffeNet,VGG-F,VGG-16,VGG-19,GoogLeNet,ResNet-152}.mat: MATLAB 5 files holding one variable `r`,
  float32 224x224x3 with values in [-10, 10]: L-inf xi = 10 on the 0-255 pixel scale (matlab/universal_perturbation.m
  l.28-29). precomputed/README.md l.5: "format WxHxC, where the channels are arranged in RGB format".
- python/data/universal.npy (TensorFlow's Inception graph, python/demo_inception.py l.60, l.83): float64
  1x224x224x3, M x H x W x C (python/universal_pert.py l.21; v takes the shape of one image batch, l.57-67), RGB
  (python/prepare_imagenet_data.py l.13; the BGR swap is commented out, l.22-24), xi = 10 (universal_pert.py l.19).
- Python preparation (prepare_imagenet_data.py): both sides resized to 256x256, aspect not kept (l.15, with
  img_size=(256, 256) at l.81 and demo_inception.py l.129), the RGB mean (123.68, 116.779, 103.939) subtracted
  (l.19-21), the 224 centre cropped (l.27); v is added to that image in 0-255 units and the sum clipped to the
  pixel range (demo_inception.py l.134-136).
- MATLAB preparation (matlab/preprocess_img.m): RGB to BGR (l.8), width and height swapped (l.9), resized to
  256x256 bilinear (l.3, l.11), the 256x256 mean image subtracted (l.12, "W x H x C, BGR"), the top-left 224x224
  kept (l.13); v is added after that (matlab/demo_caffe.m l.90) and shown with permute([2,1,3]) and channels
  [3,2,1] (l.104-105).

Where the reference is ambiguous, the choice made here:

- Channel order of the .mat files: their README says RGB, while the MATLAB code that crafts v works in BGR (and
  matlab/readme.md l.8 calls that input RGB). The published files' README is followed (RGB); `--channel-order
  bgr` reads them the other way.
- Crop position: the Python code crops the centre, the MATLAB code the top-left corner, and nothing says which the
  published files were crafted with. The centre crop is declared (the only crop this tool's preparation has).
- Resize: the reference squashes both sides to 256; this tool resizes the shorter side (data/folder.py).
  `space.added_after` declares resize 256 / crop 224 / bilinear in the data's own form, so that `task=evaluate`
  compares it with the images' preparation; `space.reference_preparation` states the difference.

The mean subtraction is a shift (no division by a std), so v added after it is v added to the 0-255 pixels: v/255,
as C x H x W RGB, is the perturbation in this tool's space (images in [0,1]; the network normalises inside).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data import Preprocessing, resize_crop_record
from .errors import UserError
from .io import torch_save
from .provenance import file_sha256, identity
from .runinfo import git_commit

PROG = "python -m cbuap_runner.import_perturbation"
REFERENCE = "LTS4/universal"
LAYOUTS = ("whc", "hwc", "chw")  # the axis order of the array in the file, batch axis of size 1 left out
DEFAULT_LAYOUT = {".mat": "whc", ".npy": "hwc"}  # precomputed/README.md; python/universal_pert.py
REFERENCE_VARIABLE = "r"  # the variable of every precomputed/*.mat
REFERENCE_PREPARATION = ("both sides resized to 256x256 (aspect not kept), mean subtracted, 224x224 cropped "
                         "(Python code: centre; MATLAB code: top-left); added in 0-255 pixel units")


def read_array(path: Path, variable: str | None = None) -> tuple[np.ndarray, str | None]:
    """The array stored in a .npy file, or the variable of a .mat file (`variable`, else `r`, else its only
    one), and the name it was read from."""
    suffix = path.suffix.lower()
    if suffix not in DEFAULT_LAYOUT:
        raise UserError(f"{path}: unknown format {suffix or '(no suffix)'!r}; give a .npy or .mat file")
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    if suffix == ".npy":
        if variable is not None:
            raise UserError(f"{path}: --variable names a variable of a .mat file; a .npy file holds one array")
        try:
            return np.load(path, allow_pickle=False), None
        except (ValueError, OSError, EOFError) as ex:
            raise UserError(f"{path}: not a perturbation array ({_first_line(ex)}); give a .npy file of numbers") from ex
    variables = _mat_variables(path)
    if variable is None:
        names = list(variables)
        if REFERENCE_VARIABLE in variables:
            variable = REFERENCE_VARIABLE
        elif len(names) == 1:
            variable = names[0]
        else:
            raise UserError(f"{path}: holds {', '.join(names) or 'no variables'}; name the perturbation with "
                            "--variable NAME")
    if variable not in variables:
        raise UserError(f"{path}: has no variable {variable!r}; it holds {', '.join(variables) or 'none'}")
    return variables[variable], variable


def _mat_variables(path: Path) -> dict[str, Any]:
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError as ex:
        raise UserError(f"{path}: reading .mat files needs scipy; install the extra: pip install -e '.[imagenet]'") from ex
    try:
        stored = loadmat(str(path))
    except NotImplementedError as ex:  # MATLAB v7.3 files are HDF5
        raise UserError(f"{path}: a MATLAB v7.3 (HDF5) file; save it with save(..., '-v7') or as .npy") from ex
    except (MatReadError, ValueError, TypeError, OSError) as ex:
        raise UserError(f"{path}: not a MATLAB file ({_first_line(ex)}); give a .mat or .npy file") from ex
    return {k: v for k, v in stored.items() if not k.startswith("__")}


def to_tensor(array: Any, layout: str, channel_order: str, scale: float, where: str) -> torch.Tensor:
    """The perturbation as float32 [C,H,W], RGB, in [0,1] pixel units; `where` names it in refusals."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        kind = getattr(array, "dtype", type(array).__name__)
        raise UserError(f"{where}: not a perturbation array (holds {kind}); give an array of numbers")
    if array.ndim == 4 and array.shape[0] == 1:  # a batch of one, as python/universal_pert.py returns it
        array = array[0]
    channel_axis = {"whc": 2, "hwc": 2, "chw": 0}[layout]
    if array.ndim != 3 or array.shape[channel_axis] not in (1, 3):
        raise UserError(f"{where}: an array of shape {tuple(array.shape)} is not one {layout.upper()} image "
                        f"perturbation (1 or 3 channels); give one perturbation, or set --layout")
    if not np.isfinite(array).all():
        raise UserError(f"{where}: holds NaN or infinite values; give a finite perturbation")
    chw = {"whc": (2, 1, 0), "hwc": (2, 0, 1), "chw": (0, 1, 2)}[layout]
    delta = torch.from_numpy(np.ascontiguousarray(array.transpose(chw), dtype=np.float32)) / scale
    if channel_order == "bgr":
        delta = delta.flip(0)
    if float(delta.abs().max()) > 1:
        raise UserError(f"{where}: values reach {float(delta.abs().max()) * scale:g}, more than --scale {scale:g}; "
                        "give the scale the file's values are in (255 for 0-255 pixels, 1 for [0,1])")
    return delta.contiguous()


def imported_perturbation(path: str | Path, *, layout: str | None = None, channel_order: str = "rgb",
                          scale: float = 255.0, variable: str | None = None, network: str | None = None,
                          norm: str = "linf", resize: int | None = 256, crop: int = 224,
                          interpolation: str = "bilinear") -> dict[str, Any]:
    """The perturbation.pt content for the file at `path` (see the module docstring for the defaults)."""
    path = Path(path).expanduser()
    array, variable = read_array(path, variable)
    layout = layout or DEFAULT_LAYOUT[path.suffix.lower()]
    where = f"{path}" + (f" (variable {variable})" if variable else "")
    delta = to_tensor(array, layout, channel_order, scale, where)
    channels, height, width = delta.shape
    if (height, width) != (crop, crop):
        raise UserError(f"{where}: δ is {height}x{width}, the declared preparation crops {crop}x{crop}; set --crop "
                        f"(and --resize) to the preparation it is added after")
    norms = {"linf": float(delta.abs().max()), "l2": float(delta.norm())}
    name = network or path.stem
    conversion = {"variable": variable, "layout": layout, "channel_order": channel_order.upper(), "scale": scale}
    source = {"file": path.name, "path": str(path.resolve()), "sha256": file_sha256(path), "reference": REFERENCE,
              **conversion}
    net = {"source": REFERENCE, "arch": name, "identity": f"{REFERENCE}:{name}", "label": f"{REFERENCE}:{name}"}
    space = {"channels": channels, "channel_order": "RGB" if channels == 3 else "grey", "value_range": [0.0, 1.0],
             "resolution": [height, width],
             "added_after": resize_crop_record(channels, Preprocessing(resize, crop, interpolation)),
             "reference_preparation": REFERENCE_PREPARATION, "clamped_to": [0.0, 1.0], "eps": norms[norm],
             "norm": norm, "network": net}
    key = {"imported": source["sha256"], "conversion": conversion, "space": space}
    return {"delta": delta, "eps": norms[norm], "norm": norm, "norms": norms, "attack": "imported",
            "class_wise": False, "space": space, "dataset": None, "model_checkpoint": None,
            "input_shape": [channels, height, width], "num_classes": None, "config": conversion,
            "provenance": {"identity": identity(key), "imported_from": source, "imported_by": git_commit()}}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("file", help="the published perturbation: .npy (one array) or .mat (needs the imagenet extra)")
    p.add_argument("--out", required=True, help="the perturbation.pt to write")
    p.add_argument("--layout", choices=LAYOUTS, help="axis order in the file (default: whc for .mat, hwc for .npy)")
    p.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb", help="channel order in the file")
    p.add_argument("--scale", type=float, default=255.0, help="the file's pixel scale: 255 (default) or 1")
    p.add_argument("--variable", help="the .mat variable holding it (default: r, else the only one)")
    p.add_argument("--network", help="the network it was crafted on (default: the file's name without suffix)")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf", help="the norm its eps is measured in")
    p.add_argument("--resize", type=int, default=256, help="shorter side before the crop (default 256)")
    p.add_argument("--crop", type=int, default=224, help="centre crop it is added after (default 224)")
    p.add_argument("--interpolation", choices=("nearest", "bilinear", "bicubic"), default="bilinear")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (math.isfinite(args.scale) and args.scale > 0):
        return _fail(f"--scale {args.scale:g}: must be a positive number (255 for 0-255 pixels, 1 for [0,1])")
    if args.crop <= 0 or (args.resize is not None and args.resize < args.crop):
        return _fail(f"--resize {args.resize} --crop {args.crop}: the crop must be positive and at most the resize")
    try:
        blob = imported_perturbation(args.file, layout=args.layout, channel_order=args.channel_order,
                                     scale=args.scale, variable=args.variable, network=args.network, norm=args.norm,
                                     resize=args.resize, crop=args.crop, interpolation=args.interpolation)
        torch_save(blob, args.out)
    except UserError as ex:
        return _fail(str(ex))
    except OSError as ex:
        return _fail(f"{ex.filename or args.out}: {ex.strerror or _first_line(ex)}; choose a path that can be written")
    norms = blob["norms"]
    print(f"wrote {args.out}: δ {list(blob['delta'].shape)} (C,H,W, RGB, [0,1]), L∞ {norms['linf']:.6g} "
          f"(= {norms['linf'] * 255:.4g}/255), L2 {norms['l2']:.6g}, crafted on {blob['space']['network']['label']}")
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _first_line(ex: BaseException) -> str:
    return next((line.strip() for line in str(ex).splitlines() if line.strip()), type(ex).__name__)


if __name__ == "__main__":
    sys.exit(main())
