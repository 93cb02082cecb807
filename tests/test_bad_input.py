"""Bad input (docs/design.md, Error handling): a corpus of mistakes, each ending in a non-zero exit and one line on
stderr that names the key or path and says what to do, with no traceback and no output that looks complete.

The corpus runs the real command line (`cbuap_runner.__main__.main`, Hydra's parsing included) in-process to
save the interpreter start-up per case; two subprocess tests check the same contract end to end.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from cbuap_runner.__main__ import main
from cbuap_runner.data import load_data
from cbuap_runner.errors import UserError
from cbuap_runner.models import build_model, save_model
from cbuap_runner.provenance import weights_key
from helpers import FAST, REPO, TINY, random_image_folder, run_cli

SYNTH_SHAPE = (1, 16, 16)  # conf/dataset/synthetic.yaml: 4 classes of 1x16x16
# what a failed run may leave in its directory: its honest record, nothing that looks like a result
RECORD_FILES = {"run_summary.json", "error.txt", "cbuap.log"}


@dataclass
class Outcome:
    code: object
    stdout: str
    stderr: str
    run_dir: Path


@pytest.fixture
def run_main(tmp_path, monkeypatch):
    """Call the CLI's main() in-process with `args`; returns its exit code and captured output."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    hydra_cfg = HydraConfig.instance().cfg  # main() sets Hydra's global state: leave it as other tests expect it

    def _run(args: list[str], run_dir: Optional[Path] = None) -> Outcome:
        run_dir = run_dir or tmp_path / "run"
        cache = [] if any(a.startswith("cache_dir=") for a in args) else [f"cache_dir={tmp_path / 'cache'}"]
        monkeypatch.setattr(sys, "argv", ["cbuap", *FAST, f"hydra.run.dir={run_dir}", *cache, *args])
        monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it to 1 for Hydra; restored after the test
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as ex:
                code = ex.code
        return Outcome(code, out.getvalue(), err.getvalue(), run_dir)

    yield _run
    for handler in root.handlers:  # Hydra's job logging points at the captured streams and the run's log file
        if handler not in saved[0]:
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    HydraConfig.instance().cfg = hydra_cfg
    GlobalHydra.instance().clear()


def one_line_error(stderr: str) -> str:
    """The single line of stderr, checked to be an error line without a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0][len("error: "):]


def files_under(run_dir: Path) -> dict[str, bytes]:
    if not run_dir.is_dir():
        return {}
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def assert_nothing_looks_complete(run_dir: Path, before: dict[str, bytes], line: str) -> None:
    """Only the failure record was added; what was there before is untouched; no temp files are left."""
    after = files_under(run_dir)
    for name, content in before.items():
        if name not in RECORD_FILES:
            assert after.get(name) == content, f"{name} was changed or removed"
    added = {n for n in after if n not in before and not n.startswith(".hydra/")} - RECORD_FILES
    assert not added, f"a failed run left {sorted(added)}"
    assert not [n for n in after if n.endswith(".tmp")]
    if (run_dir / "run_summary.json").exists():
        summary = json.loads((run_dir / "run_summary.json").read_text())
        assert summary["status"] == "failed" and summary["error"] == line
        assert (run_dir / "error.txt").read_text().strip() == line


# ---------------------------------------------------------------- files the cases use


class _RunsCode:
    """Unpickling this would create the file named in `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _model_file(path: Path, shape=SYNTH_SHAPE, classes=4, model_cfg=None) -> Path:
    model = build_model("small_cnn", classes, shape)
    save_model(str(path), model, model_cfg or {"name": "small_cnn"}, "synthetic", classes, shape)
    return path


def _delta_file(path: Path, delta: torch.Tensor, attack="sgd_uap", **extra) -> Path:
    torch.save({"delta": delta, "eps": 0.1, "norm": "linf", "attack": attack, "dataset": "synthetic",
                "model_checkpoint": None, **extra}, path)
    return path


def _truncated(path: Path, good: Path) -> Path:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _images(root: Path, classes: int, per_class: int = 2, corrupt: bool = False) -> Path:
    random_image_folder(root, classes, per_class, channels=1)
    if corrupt:
        (root / "train" / "c0" / "0.png").write_text("not an image")
    return root


def _idx_truncated(root: Path) -> Path:
    root.mkdir(parents=True)
    header = bytes([0, 0, 0x08, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    for prefix in ("train", "t10k"):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(header + bytes(100))  # 100 of 7840 pixel bytes
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + bytes(10))
    return root


def _earlier_run(run_dir: Path) -> Path:
    """A run directory as an interrupted run leaves it (its record says it was running)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_summary.json").write_text(json.dumps({"status": "running"}))
    return run_dir


def _checkpoint(run_dir: Path, validated, **changes) -> Path:
    """A well-formed checkpoint.pt for the TINY config, trained (it claims) with `changes` applied."""
    cfg = validated(["task=train", *TINY, *(f"{k}={v}" for k, v in changes.items())])
    model = build_model("small_cnn", 4, SYNTH_SHAPE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {}, "adversary": {},
                "rng": {"torch": torch.get_rng_state()}, "epoch": 1, "history": [], "train_seconds": 0.0,
                "config": weights_key(cfg, load_data(cfg.dataset, "unused", cfg.seed, torch.device("cpu")).fingerprint)},
               run_dir / "checkpoint.pt")
    return run_dir


# ---------------------------------------------------------------- the corpus


@dataclass
class Case:
    id: str
    args: list[str]  # "{t}" stands for the test's tmp_path
    needles: tuple[str, ...]  # each must appear in the error line ("{t}" as above)
    setup: Optional[Callable[[Path, Callable], None]] = None  # (tmp_path, validated) -> None
    run_dir: str = "{t}/run"
    env: Optional[dict] = None


SCHEMA_GROUPS = ("dataset", "model", "attack", "training", "logger")
NO_NETWORK = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}


def _evil(path: str, run_dir: bool = False):
    def setup(t: Path, _):
        target = t / path
        if run_dir:
            _earlier_run(target.parent)
        torch.save({"payload": _RunsCode(t / "pwned")}, target, pickle_module=pickle)
    return setup


def _file(name: str, content: bytes):
    return lambda t, _: (t / name).write_bytes(content)


CASES = [
    # --- keys and options
    Case("misspelt_top_level_key", ["sede=1"], ("sede", "unknown config key", "check the spelling")),
    Case("misspelt_nested_key", ["attack.epss=0.1"], ("attack.epss", "unknown config key")),
    Case("misspelt_training_key", [*TINY, "training.epoch=2"], ("training.epoch", "unknown config key")),
    Case("unknown_dataset", ["dataset=cifar11"], ("dataset=cifar11", "choose one of", "cifar10")),
    Case("unknown_model", ["model=resnet21"], ("model=resnet21", "choose one of", "resnet20")),
    Case("unknown_defence", ["training=ut"], ("training=ut", "choose one of", "uat")),
    Case("unknown_attack", ["attack=fgsm"], ("attack=fgsm", "choose one of", "sgd_uap")),
    *(Case(f"schema_given_as_{group}_option", [*(a for a in TINY if not a.startswith(f"{group}=")), f"{group}=base_{group}"],
           (f"{group}=base_{group}", "no such option")) for group in SCHEMA_GROUPS),  # schemas are root configs, not options
    Case("unparsable_override", ["attack.eps=[1,"], ("attack.eps=[1,", "cannot parse", "key=value")),
    Case("missing_required_value", ["dataset=image_folder"], ("dataset.root", "set it")),
    # --- ill-typed values
    Case("int_given_text", ["training.epochs=three"], ("training.epochs", "three")),
    Case("float_given_text", ["attack.eps=big"], ("attack.eps", "big")),
    Case("bool_given_text", ["resume=maybe"], ("resume", "maybe", "auto, true or false")),
    Case("resume_given_a_number", [*TINY, "resume=1"], ("resume=1", "auto, true or false")),
    # --- out-of-range values
    Case("eps_zero", [*TINY, "attack.eps=0"], ("attack.eps=0.0", "> 0")),
    Case("eps_negative", [*TINY, "attack.eps=-1"], ("attack.eps=-1", "> 0")),
    Case("eps_above_one", [*TINY, "attack.eps=1.5"], ("attack.eps=1.5", "[0,1] images")),
    Case("training_eps_above_one", [*TINY, "training=uat", "training.eps=2"], ("training.eps=2", "[0,1] images")),
    Case("epochs_zero", [*TINY, "training.epochs=0"], ("training.epochs=0", "> 0")),
    Case("epochs_negative", [*TINY, "training.epochs=-3"], ("training.epochs=-3", "> 0")),
    Case("batch_size_zero", [*TINY, "training.batch_size=0"], ("training.batch_size=0", "> 0")),
    Case("attack_batch_size_zero", [*TINY, "attack.batch_size=0"], ("attack.batch_size=0", "> 0")),
    Case("lr_nan", [*TINY, "training.lr=nan"], ("training.lr=nan", "finite")),
    Case("lr_inf", [*TINY, "training.lr=inf"], ("training.lr=inf", "finite")),
    Case("crafting_images_zero", [*TINY, "attack.crafting_images=0"], ("attack.crafting_images=0", "> 0")),
    Case("eval_images_negative", [*TINY, "eval.num_images=-1"], ("eval.num_images=-1", "> 0")),
    Case("unknown_norm", [*TINY, "attack.norm=l3"], ("attack.norm='l3'", "linf, l2")),
    Case("unknown_device", [*TINY, "device=gpu"], ("device='gpu'", "auto, cpu, cuda")),
    Case("unknown_task", [*TINY, "task=fit"], ("task='fit'", "train, attack, evaluate, pipeline")),
    Case("milestone_outside_run", [*TINY, "training.milestones=[0.5,1.5]"], ("training.milestones", "(0, 1)")),
    # --- impossible combinations
    Case("target_outside_label_set", [*TINY, "attack.target=7"], ("attack.target=7", "[0, 3]")),
    Case("target_negative", [*TINY, "attack.target=-1"], ("attack.target=-1", "[0, 3]")),
    Case("target_with_untargeted_attack", [*TINY, "attack=uap", "attack.target=1"],
         ("attack.target", "attack=uap has no such key", "attack=sgd_uap, cb_uap have it")),
    Case("added_key_of_another_attack", [*TINY, "attack=uap", "+attack.target=1"],
         ("attack.target", "attack=uap has no such key", "attack=sgd_uap, cb_uap have it")),
    Case("perturbation_shape_differs_from_dataset",
         [*TINY, "task=evaluate", "model.checkpoint={t}/model.pt", "perturbation={t}/delta_rgb.pt"],
         ("perturbation=", "delta_rgb.pt", "(3, 32, 32)", "(1, 16, 16)"),
         lambda t, _: (_model_file(t / "model.pt"), _delta_file(t / "delta_rgb.pt", torch.zeros(3, 32, 32)))),
    Case("classwise_perturbation_for_other_classes",
         [*TINY, "task=evaluate", "model.checkpoint={t}/model.pt", "perturbation={t}/cw.pt"],
         ("perturbation=", "cw.pt", "10 classes"),
         lambda t, _: (_model_file(t / "model.pt"), _delta_file(t / "cw.pt", torch.zeros(10, *SYNTH_SHAPE), "cw_uap"))),
    Case("perturbation_given_as_model", [*TINY, "task=evaluate", "model.checkpoint={t}/delta.pt"],
         ("model.checkpoint=", "delta.pt", "perturbation=<path>"),
         lambda t, _: _delta_file(t / "delta.pt", torch.zeros(*SYNTH_SHAPE))),
    Case("model_given_as_perturbation",
         [*TINY, "task=evaluate", "model.checkpoint={t}/model.pt", "perturbation={t}/model.pt"],
         ("perturbation=", "model.pt", "model.checkpoint=<path>"), lambda t, _: _model_file(t / "model.pt")),
    Case("model_for_another_dataset", [*TINY, "task=attack", "model.checkpoint={t}/rgb.pt"],
         ("model.checkpoint=", "rgb.pt", "(3, 32, 32)"), lambda t, _: _model_file(t / "rgb.pt", (3, 32, 32), 10)),
    Case("model_file_with_unknown_architecture", [*TINY, "task=evaluate", "model.checkpoint={t}/odd.pt"],
         ("model.checkpoint=", "odd.pt", "os.system"),
         lambda t, _: _model_file(t / "odd.pt", model_cfg={"name": "os.system", "_target_": "os.system"})),
    # --- missing, empty, truncated, foreign and unsafe files
    Case("checkpoint_missing", [*TINY, "task=evaluate", "model.checkpoint={t}/nope.pt"],
         ("model.checkpoint=", "nope.pt", "no such file")),
    Case("checkpoint_is_a_directory", [*TINY, "task=evaluate", "model.checkpoint={t}"],
         ("model.checkpoint=", "is a directory", ".pt file inside")),
    Case("checkpoint_empty", [*TINY, "task=evaluate", "model.checkpoint={t}/empty.pt"],
         ("model.checkpoint=", "empty.pt", "empty"), _file("empty.pt", b"")),
    Case("checkpoint_truncated", [*TINY, "task=evaluate", "model.checkpoint={t}/cut.pt"],
         ("model.checkpoint=", "cut.pt", "truncated"),
         lambda t, _: _truncated(t / "cut.pt", _model_file(t / "model.pt"))),
    Case("checkpoint_foreign", [*TINY, "task=evaluate", "model.checkpoint={t}/notes.pt"],
         ("model.checkpoint=", "notes.pt", "another format"), _file("notes.pt", b"just some text\n")),
    Case("checkpoint_not_a_model", [*TINY, "task=evaluate", "model.checkpoint={t}/dict.pt"],
         ("model.checkpoint=", "dict.pt", "not a cbuap-runner model file"),
         lambda t, _: torch.save({"weights": torch.zeros(3)}, t / "dict.pt")),
    Case("init_checkpoint_missing", [*TINY, "task=train", "training.init_checkpoint={t}/nope.pt"],
         ("training.init_checkpoint=", "nope.pt", "no such file")),
    Case("perturbation_missing", [*TINY, "task=evaluate", "model.checkpoint={t}/model.pt", "perturbation={t}/nope.pt"],
         ("perturbation=", "nope.pt", "no such file"), lambda t, _: _model_file(t / "model.pt")),
    Case("perturbation_truncated",
         [*TINY, "task=evaluate", "model.checkpoint={t}/model.pt", "perturbation={t}/cut.pt"],
         ("perturbation=", "cut.pt", "truncated"),
         lambda t, _: (_model_file(t / "model.pt"),
                       _truncated(t / "cut.pt", _delta_file(t / "delta.pt", torch.zeros(*SYNTH_SHAPE))))),
    Case("perturbation_without_delta",
         [*TINY, "task=evaluate", "model.checkpoint={t}/model.pt", "perturbation={t}/other.pt"],
         ("perturbation=", "other.pt", "'delta' tensor"),
         lambda t, _: (_model_file(t / "model.pt"), torch.save({"eps": 0.1}, t / "other.pt"))),
    Case("perturbation_that_runs_code",
         [*TINY, "task=evaluate", "model.checkpoint={t}/model.pt", "perturbation={t}/evil.pt"],
         ("perturbation=", "evil.pt", "refused"),
         lambda t, v: (_model_file(t / "model.pt"), _evil("evil.pt")(t, v))),
    # --- resume
    Case("resume_without_an_earlier_run", [*TINY, "task=train", "resume=true"],
         ("resume=true", "holds no earlier run", "hydra.run.dir=")),
    Case("resume_checkpoint_truncated", [*TINY, "task=train", "resume=true"],
         ("resume=", "checkpoint.pt", "truncated"),
         lambda t, v: _truncated(_earlier_run(t / "run") / "checkpoint.pt", _model_file(t / "model.pt"))),
    Case("resume_checkpoint_that_runs_code", [*TINY, "task=train", "resume=true"],
         ("resume=", "checkpoint.pt", "refused"), _evil("run/checkpoint.pt", run_dir=True)),
    Case("resume_from_a_model_file", [*TINY, "task=train", "resume=true"],
         ("resume=true", "checkpoint.pt", "not a training checkpoint"),
         lambda t, _: _model_file(_earlier_run(t / "run") / "checkpoint.pt")),
    Case("resume_with_changed_settings", [*TINY, "task=train", "resume=true", "training.epochs=2"],
         ("training.epochs=2", "trained with training.epochs=1", "same settings"),
         lambda t, v: _checkpoint(_earlier_run(t / "run"), v)),
    Case("resume_auto_with_changed_settings", [*TINY, "task=train", "training.epochs=2"],  # resume=auto: the default
         ("training.epochs=2", "trained with training.epochs=1", "resume=auto", "same settings", "resume=false"),
         lambda t, v: _checkpoint(_earlier_run(t / "run"), v)),
    # --- data
    Case("data_dir_without_data", ["task=train", "dataset=mnist", "dataset.root={t}/empty", "dataset.download=false"],
         ("dataset.root=", "{t}/empty", "download=false", "put the data there"),
         lambda t, _: (t / "empty").mkdir()),
    Case("data_absent_and_download_fails", ["task=train", "dataset=mnist", "dataset.root={t}/empty"],
         ("dataset.root=", "{t}/empty", "download failed", "network"), lambda t, _: (t / "empty").mkdir(),
         env=NO_NETWORK),
    Case("image_folder_without_folders",
         ["task=train", "dataset=image_folder", "dataset.root={t}/nothing", "dataset.num_classes=2"],
         ("dataset.root=", "{t}/nothing", "train/<class>/")),
    Case("image_folder_without_images",
         ["task=train", "dataset=image_folder", "dataset.root={t}/imgs", "dataset.num_classes=2"],
         ("{t}/imgs/train", "no images"), lambda t, _: _images(t / "imgs", 2, per_class=0)),
    Case("image_folder_corrupt_image",
         ["task=train", "dataset=image_folder", "dataset.root={t}/imgs", "dataset.num_classes=2",
          "dataset.channels=1", "dataset.image_size=16", "dataset.mean=[0.5]", "dataset.std=[0.25]"],
         ("{t}/imgs/train/c0/0.png", "cannot decode"), lambda t, _: _images(t / "imgs", 2, corrupt=True)),
    Case("image_folder_more_classes_than_configured",
         ["task=train", "dataset=image_folder", "dataset.root={t}/imgs", "dataset.num_classes=2",
          "dataset.channels=1", "dataset.image_size=16", "dataset.mean=[0.5]", "dataset.std=[0.25]"],
         ("dataset.num_classes=2", "3 classes", "set dataset.num_classes"), lambda t, _: _images(t / "imgs", 3)),
    Case("idx_file_truncated", ["task=train", "dataset=mnist", "dataset.root={t}/mnist", "dataset.download=false"],
         ("{t}/mnist/train-images-idx3-ubyte", "truncated", "download"), lambda t, _: _idx_truncated(t / "mnist")),
    # --- places that cannot be written (a path below a regular file: even root cannot create it)
    Case("run_dir_not_writable", [*TINY, "task=train"], ("{t}/afile/run", "hydra.run.dir"),
         _file("afile", b"a file, not a directory"), run_dir="{t}/afile/run"),
    Case("cache_dir_not_writable",
         ["task=train", "dataset=image_folder", "dataset.root={t}/imgs", "dataset.num_classes=2",
          "dataset.channels=1", "dataset.image_size=16", "dataset.mean=[0.5]", "dataset.std=[0.25]",
          "cache_dir={t}/afile/cache"],
         ("{t}/afile", "cache_dir"), lambda t, v: (_images(t / "imgs", 2), _file("afile", b"x")(t, v))),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, run_main, tmp_path, validated, monkeypatch):
    for key, value in (case.env or {}).items():
        monkeypatch.setenv(key, value)
    if case.setup is not None:
        case.setup(tmp_path, validated)
    run_dir = Path(case.run_dir.format(t=tmp_path))
    before = files_under(run_dir)
    result = run_main([a.format(t=tmp_path) for a in case.args], run_dir)
    assert result.code == 1
    line = one_line_error(result.stderr)
    for needle in case.needles:
        assert needle.format(t=tmp_path) in line, line
    assert_nothing_looks_complete(run_dir, before, line)
    assert not (tmp_path / "pwned").exists()  # no file was unpickled into running code


def test_corpus_is_large_enough():
    assert len({c.id for c in CASES}) == len(CASES) >= 25


def test_help_lists_only_real_options(run_main):
    """--help lists each group's YAML files as its options, never a schema (base_*)."""
    result = run_main(["--help"])
    assert result.code == 0 and "base_" not in result.stdout, result.stdout
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line)
    for group in SCHEMA_GROUPS:
        assert listed[group].split(", ") == sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")), group


def test_full_error_shows_the_traceback(run_main, monkeypatch, tmp_path):
    """HYDRA_FULL_ERROR=1 is the one way to see the exception itself."""
    monkeypatch.setattr(sys, "argv", ["cbuap", *FAST, f"hydra.run.dir={tmp_path / 'run'}", *TINY, "attack.eps=0"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UserError, match="attack.eps"), redirect_stdout(io.StringIO()):
        main()


# ---------------------------------------------------------------- end to end, in a fresh interpreter


@pytest.mark.e2e
def test_cli_composition_error_is_one_line(tmp_path):
    proc = run_cli(["attack.epss=0.1"], tmp_path / "run")
    assert proc.returncode == 1
    assert "attack.epss" in one_line_error(proc.stderr)


@pytest.mark.e2e
def test_cli_late_failure_is_one_line_and_leaves_an_honest_record(tmp_path):
    """A failure inside the job: exit 1, exactly one stderr line (not Hydra's extra report), a failed record."""
    path = _truncated(tmp_path / "cut.pt", _model_file(tmp_path / "model.pt"))
    proc = run_cli([*TINY, "task=attack", f"model.checkpoint={path}"], tmp_path / "run")
    assert proc.returncode == 1
    line = one_line_error(proc.stderr)
    assert "model.checkpoint=" in line and "cut.pt" in line
    assert_nothing_looks_complete(tmp_path / "run", {}, line)


def test_failed_run_removes_nothing_it_did_not_write(run_main, tmp_path):
    """A file already in the run directory (here a result of an earlier run) survives a later failure."""
    run_dir = _earlier_run(tmp_path / "run")
    (run_dir / "model.pt").write_bytes(b"earlier result")
    result = run_main([*TINY, "attack.eps=0"], run_dir)
    assert result.code == 1 and (run_dir / "model.pt").read_bytes() == b"earlier result"
    assert os.listdir(run_dir)  # sanity: the directory was not replaced


def test_every_torch_load_is_weights_only():
    """No code path unpickles arbitrary objects: every torch.load in the package and scripts is weights_only."""
    calls = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]:
        text = path.read_text()
        start = text.find("torch.load(")
        while start != -1:
            end = text.find(")", text.find("\n", start))  # the call and its continuation line
            calls.append((path.name, text[start:end]))
            start = text.find("torch.load(", start + 1)
    assert calls
    for name, call in calls:
        assert "weights_only=True" in call, f"{name}: {call}"
