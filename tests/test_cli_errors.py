"""Bad input on the command line: one line naming the key or path, a non-zero exit, no traceback."""

from __future__ import annotations

import json

import pytest
import torch


def assert_one_line_error(proc, *needles: str) -> str:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_failed_record(run_dir) -> None:
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"]
    assert (run_dir / "error.txt").is_file()
    assert not (run_dir / "model.pt").exists() and not (run_dir / "perturbation.pt").exists()


def test_misspelt_key(cli):
    proc, _ = cli(["attack.epss=0.1"])
    assert_one_line_error(proc, "attack.epss")


def test_unknown_option(cli):
    proc, _ = cli(["dataset=cifar11"])
    assert_one_line_error(proc, "dataset=cifar11", "cifar10")


@pytest.mark.parametrize("override,key", [("attack.eps=-1", "attack.eps"), ("training.epochs=0", "training.epochs")])
def test_out_of_range(cli, override, key):
    proc, run_dir = cli(["dataset=synthetic", override])
    assert_one_line_error(proc, key)
    assert_failed_record(run_dir)


def test_ill_typed_value(cli):
    proc, _ = cli(["training.epochs=three"])
    assert_one_line_error(proc, "training.epochs")


def test_missing_checkpoint(cli, tmp_path):
    proc, run_dir = cli(["dataset=synthetic", "task=evaluate", f"model.checkpoint={tmp_path}/nope.pt"])
    assert_one_line_error(proc, "model.checkpoint", "nope.pt", "no such file")
    assert_failed_record(run_dir)


def test_truncated_checkpoint(cli, tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "model": {"name": "small_cnn"}}, good)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    proc, run_dir = cli(["dataset=synthetic", "task=evaluate", f"model.checkpoint={bad}"])
    assert_one_line_error(proc, "model.checkpoint", "truncated.pt")
    assert_failed_record(run_dir)


def test_data_dir_without_data_and_no_network(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, run_dir = cli(["dataset=mnist", f"dataset.root={empty}", "dataset.download=false", "task=train"])
    assert_one_line_error(proc, "dataset.root", str(empty))
    assert_failed_record(run_dir)


def test_download_failure_is_one_line(cli, tmp_path, monkeypatch):
    """With downloads allowed but no network (simulated by an unroutable proxy) the message names the root."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc, run_dir = cli(["dataset=mnist", f"dataset.root={empty}", "task=train"], env=env)
    assert_one_line_error(proc, "dataset.root", "download failed")
