"""The ILSVRC2012 (ImageNet-1k) layout: which image files make each split, their labels and the class names.

Under `root`:

- `train/<wnid>/*`: the training split (any suffix of `folder.IMAGE_SUFFIXES`, in any case). The classes are the
  sorted folder names, which is ILSVRC2012's class index order and the order of torchvision's ImageNet weights
  (torchvision's ImageFolder sorts the wnid folders it trains on).
- `val/` (or `test/`, the image_folder layout's name; `val/` first): the evaluated split ("test"), ILSVRC2012's
  50,000 validation images, either in `<wnid>/` class folders, or flat as distributed
  (`ILSVRC2012_val_00000001.JPEG`, ...). Flat files are labelled by the first of:
  1. the devkit, unpacked (`ILSVRC2012_devkit_t12/`) or as its archive (`ILSVRC2012_devkit_t12.tar.gz`, read in
     memory): `data/ILSVRC2012_validation_ground_truth.txt` holds the 1-based ILSVRC2012_ID of image 1, 2, ...
     and `data/meta.mat` maps each ID to its wnid (reading it needs scipy: the `imagenet` extra);
  2. `meta.bin`, the devkit's digest that torchvision.datasets.ImageNet writes under its root;
  3. Kaggle's `LOC_val_solution.csv` (ImageId, PredictionString whose first token is the wnid), under root or, in
     Kaggle's layout (root = `<top>/ILSVRC/Data/CLS-LOC`), in `<top>`.

Class names come from the first of: the devkit's meta.mat words, meta.bin, Kaggle's `LOC_synset_mapping.txt`
(`<wnid> <words>` per line; same places as the CSV). Each class is named by the first of its words; when the table
is ILSVRC2012's 1,000 classes (torchvision's category list agrees with it), by torchvision's category name, which
is that first word except for the two cranes and two maillots it tells apart, so that the names match the
networks'. Tables list all 1,000 classes, so a subset of ImageNet (ImageNet-100) is named from them too. Without a
table, exactly 1,000 wnid folders take torchvision's categories in order; anything else is named by its folders.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .folder import IMAGE_SUFFIXES, FolderListing

log = logging.getLogger(__name__)

DEVKIT = "ILSVRC2012_devkit_t12"
META_MAT = f"{DEVKIT}/data/meta.mat"
GROUND_TRUTH = f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt"
META_BIN = "meta.bin"  # torchvision.datasets.imagenet.META_FILE
KAGGLE_LABELS = "LOC_val_solution.csv"
KAGGLE_NAMES = "LOC_synset_mapping.txt"
VAL_FOLDERS = ("val", "test")
WNID = re.compile(r"n\d{8}")
VAL_FILE = "ILSVRC2012_val_{:08d}"  # image k's file name without its suffix (k from 1)


def imagenet_split(root: Path, split: str) -> FolderListing:
    """The files, labels and class names of `split` ("train", or "test": ILSVRC2012's validation images)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(root).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise UserError(f"{train_dir}: no such folder; ImageNet needs its training images there, one folder per "
                        "class (train/<wnid>/*.JPEG, ILSVRC2012_img_train.tar unpacked)")
    classes = _class_folders(train_dir)
    if not classes:
        raise UserError(f"{train_dir}: no class folders; put the training images in {train_dir}/<wnid>/")
    if split == "train":
        split_dir, files = train_dir, _class_files(train_dir, classes, classes)
    else:
        split_dir, files = _validation_files(root, train_dir, classes)
    return FolderListing(classes, _names(root, classes), files, split_dir)


# ---------------------------------------------------------------- listing


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name."""
    names = sorted(e.name for e in os.scandir(folder)
                   if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    return [folder / n for n in names]


def _class_files(split_dir: Path, folders: list[str], classes: list[str]) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    files = []
    for name in folders:
        images = _images(split_dir / name)
        if not images:
            raise UserError(f"{split_dir / name}: empty class folder (no {', '.join(sorted(IMAGE_SUFFIXES))} files); "
                            "put its images there or remove the folder")
        files.extend((path, index[name]) for path in images)
    return files


def _check_in_train(where: str, wnids: set[str], train_dir: Path, classes: list[str]) -> None:
    missing = sorted(wnids - set(classes))
    if missing:
        shown = ", ".join(missing[:2]) + (", ..." if len(missing) > 2 else "")
        raise UserError(f"{where}: {len(missing)} validation class{'es' if len(missing) > 1 else ''} "
                        f"({shown}) not among the {len(classes)} class folders of {train_dir}; the classes are "
                        "the training folders, so give train/ those classes or remove them from the validation split")


def _validation_files(root: Path, train_dir: Path, classes: list[str]) -> tuple[Path, list[tuple[Path, int]]]:
    val_dir = next((root / d for d in VAL_FOLDERS if (root / d).is_dir()), None)
    if val_dir is None:
        raise UserError(f"{root}: no val/ folder; put ILSVRC2012's validation images (ILSVRC2012_img_val.tar "
                        f"unpacked) in {root / 'val'}")
    folders, flat = _class_folders(val_dir), _images(val_dir)
    if folders and flat:
        raise UserError(f"{val_dir}: holds both image files and class folders; keep one layout (all images flat, "
                        "or all in <wnid>/ folders)")
    if folders:
        _check_in_train(str(val_dir), set(folders), train_dir, classes)
        return val_dir, _class_files(val_dir, folders, classes)
    if not flat:
        raise UserError(f"{val_dir}: no images; put ILSVRC2012's validation images there (flat, or in <wnid>/ "
                        "folders)")
    wnids, label_file = _flat_labels(root, val_dir, flat)
    _check_in_train(f"{val_dir} (labelled by {label_file})", set(wnids), train_dir, classes)
    index = {c: i for i, c in enumerate(classes)}
    return val_dir, [(path, index[w]) for path, w in zip(flat, wnids)]


def _flat_labels(root: Path, val_dir: Path, files: list[Path]) -> tuple[list[str], Path]:
    """Each flat validation file's wnid, and the file that gave them."""
    found = _val_labels(root)
    if found is None:
        raise UserError(f"{val_dir}: {len(files)} images with neither class folders nor labels; put "
                        f"{DEVKIT}.tar.gz (ILSVRC2012's devkit) or Kaggle's {KAGGLE_LABELS} in {root}, or the "
                        f"images in {val_dir}/<wnid>/")
    source, by_stem = found
    _log_once(f"ImageNet validation labels from {source}")
    stems = set()
    for path in files:
        if path.stem not in by_stem:
            raise UserError(f"{path}: not listed in {source}; remove it (val/ holds ILSVRC2012's validation images)")
        if path.stem in stems:
            raise UserError(f"{path}: a second file for image {path.stem} in {val_dir}; keep one")
        stems.add(path.stem)
    if len(files) != len(by_stem):
        raise UserError(f"{source}: labels {len(by_stem)} validation images but {val_dir} holds {len(files)}; "
                        "put every validation image there, or them in <wnid>/ folders")
    return [by_stem[p.stem] for p in files], source


# ---------------------------------------------------------------- label and name sources


def _places(root: Path) -> list[Path]:
    """Where Kaggle's files are: root, and the top of Kaggle's layout when root is its ILSVRC/Data/CLS-LOC."""
    return [root, root.parents[2]] if root.parts[-3:] == ("ILSVRC", "Data", "CLS-LOC") else [root]


def _reason(ex: BaseException) -> str:
    """An exception's first line (library errors can span several)."""
    return f"{type(ex).__name__}: {(str(ex).strip().splitlines() or [''])[0]}"


@dataclass(frozen=True)
class _Devkit:
    path: Path  # the unpacked folder or the archive
    words: dict[str, str]  # wnid -> words, the 1,000 leaf synsets
    val_wnids: Optional[list[str]]  # validation image k's wnid at k - 1 (None: no ground truth file)


def _devkit(root: Path) -> Optional[_Devkit]:
    """The devkit under root: unpacked (its meta.mat there), else the archive."""
    for path, main in ((root / DEVKIT, root / META_MAT), (root / f"{DEVKIT}.tar.gz", root / f"{DEVKIT}.tar.gz")):
        if main.is_file():
            st = main.stat()
            return _read_devkit(path, (st.st_size, st.st_mtime_ns))  # the stamp renews the cache
    return None


@functools.lru_cache(maxsize=4)
def _read_devkit(path: Path, stamp: tuple[int, int]) -> _Devkit:
    """The devkit's synsets and validation ground truth, read as torchvision's parse_devkit_archive does (whose
    archive check wants the original file's MD5 and which writes meta.bin into root, so it is not called)."""
    if path.is_dir():
        gt = path.parent / GROUND_TRUTH
        meta, truth = (path.parent / META_MAT).read_bytes(), gt.read_text() if gt.is_file() else None
    else:
        try:
            with tarfile.open(path, "r:gz") as tar:
                members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
                if META_MAT not in members:
                    raise UserError(f"{path}: no {META_MAT} in this archive; put ILSVRC2012's devkit there")
                meta = tar.extractfile(members[META_MAT]).read()
                truth = tar.extractfile(members[GROUND_TRUTH]).read().decode() if GROUND_TRUTH in members else None
        except (tarfile.TarError, OSError, EOFError, zlib.error) as ex:
            raise UserError(f"{path}: cannot read this archive ({_reason(ex)}); replace it with ILSVRC2012's devkit"
                            ) from ex
    try:
        import scipy.io
    except ImportError:
        raise UserError(f"{path}: reading the devkit's meta.mat needs scipy; pip install 'cbuap-runner[imagenet]'"
                        ) from None
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        leaves = [s for s in synsets if int(s["num_children"]) == 0]  # the classes; the rest are WordNet parents
        by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
        words = {str(s["WNID"]): str(s["words"]) for s in leaves}
    except Exception as ex:  # scipy raises many types for a damaged file
        raise UserError(f"{path}: cannot read {META_MAT} ({_reason(ex)}); replace the devkit") from ex
    val_wnids = None
    if truth is not None:
        val_wnids = []
        for n, line in enumerate(truth.split(), 1):
            if not line.isdigit() or int(line) not in by_id:
                raise UserError(f"{path}: line {n} of {GROUND_TRUTH} is {line!r}, not an ILSVRC2012_ID of meta.mat")
            val_wnids.append(by_id[int(line)])
    return _Devkit(path, words, val_wnids)


def _meta_bin(root: Path) -> Optional[tuple[dict[str, str], list[str]]]:
    """torchvision's meta.bin: wnid -> words, and the validation images' wnids in order."""
    if not (root / META_BIN).is_file():
        return None
    from torchvision.datasets.imagenet import load_meta_file

    try:
        classes, val_wnids = load_meta_file(str(root))
    except Exception as ex:  # a damaged or foreign file
        raise UserError(f"{root / META_BIN}: cannot read it as torchvision's ImageNet meta file ({_reason(ex)}); "
                        "remove it") from ex
    return {w: ", ".join(names) for w, names in classes.items()}, list(val_wnids)


def _kaggle_labels(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(rows.fieldnames or ()):
            raise UserError(f"{path}: expected the columns ImageId,PredictionString (Kaggle's {KAGGLE_LABELS})")
        out = {}
        for n, row in enumerate(rows, 2):
            tokens = (row["PredictionString"] or "").split()
            if not tokens or not WNID.fullmatch(tokens[0]):
                raise UserError(f"{path}: line {n} has no wnid first in its PredictionString")
            out[row["ImageId"].strip()] = tokens[0]
    return out


def _kaggle_names(path: Path) -> dict[str, str]:
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            wnid, _, words = line.strip().partition(" ")
            if not WNID.fullmatch(wnid) or not words.strip():
                raise UserError(f"{path}: line {n} is not '<wnid> <names>'")
            out[wnid] = words.strip()
    return out


def _val_labels(root: Path) -> Optional[tuple[Path, dict[str, str]]]:
    """(the label file, file stem -> wnid) for flat validation files, from the first source found."""
    kit = _devkit(root)
    if kit is not None and kit.val_wnids is not None:
        return kit.path, {VAL_FILE.format(k): w for k, w in enumerate(kit.val_wnids, 1)}
    meta = _meta_bin(root)
    if meta is not None:
        return root / META_BIN, {VAL_FILE.format(k): w for k, w in enumerate(meta[1], 1)}
    for place in _places(root):
        if (place / KAGGLE_LABELS).is_file():
            return place / KAGGLE_LABELS, _kaggle_labels(place / KAGGLE_LABELS)
    return None


def _name_table(root: Path) -> Optional[tuple[Path, dict[str, str]]]:
    """(its file, wnid -> words) from the first source of class names found."""
    kit = _devkit(root)
    if kit is not None:
        return kit.path, kit.words
    meta = _meta_bin(root)
    if meta is not None:
        return root / META_BIN, meta[0]
    for place in _places(root):
        if (place / KAGGLE_NAMES).is_file():
            return place / KAGGLE_NAMES, _kaggle_names(place / KAGGLE_NAMES)
    return None


def torchvision_categories() -> list[str]:
    """torchvision's ImageNet category names, class 0 first (sorted-wnid order)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _table_names(table: dict[str, str]) -> dict[str, str]:
    """wnid -> name: torchvision's category when the table is ILSVRC2012's 1,000 classes, else its first word."""
    first = {w: words.split(", ")[0].strip() for w, words in table.items()}
    categories, ordered = torchvision_categories(), sorted(table)
    if len(ordered) == len(categories) and all(
            c == first[w] or c.startswith(first[w] + " ") for w, c in zip(ordered, categories)):
        return dict(zip(ordered, categories))
    return first


_told: set[str] = set()


def _log_once(text: str) -> None:
    """Log `text` once per process (a run lists both splits)."""
    if text not in _told:
        _told.add(text)
        log.info(text)


def _names(root: Path, classes: list[str]) -> list[str]:
    found = _name_table(root)
    if found is not None:
        source, table = found
        names = _table_names(table)
        unnamed = [c for c in classes if c not in names]
        if unnamed:
            _log_once(f"{len(unnamed)} class folders of {root / 'train'} are not in {source} (e.g. "
                            f"{unnamed[0]}): named by their folders")
        else:
            _log_once(f"ImageNet class names from {source}")
        return [names.get(c, c) for c in classes]
    if len(classes) == 1000 and all(WNID.fullmatch(c) for c in classes):
        _log_once("ImageNet class names: torchvision's categories of the 1,000 wnids in sorted order")
        return torchvision_categories()
    _log_once(f"ImageNet classes named by their folders; for names put {DEVKIT}.tar.gz or Kaggle's "
                    f"{KAGGLE_NAMES} in {root}")
    return list(classes)
