"""scripts/bench.py: the defence-cost figures run through the training loop the runs use."""

from __future__ import annotations

import importlib.util

import torch
from omegaconf import OmegaConf

from cbuap_runner.data import load_data
from helpers import REPO, compose_config


def _bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defence_epoch_times_train_each_defence_on_a_subset(tmp_path):
    dataset = OmegaConf.to_object(compose_config(["dataset=synthetic"])).dataset
    data = load_data(dataset, str(tmp_path / "cache"), 0, torch.device("cpu"))
    times = _bench().defence_epoch_times("small_cnn", data, dataset, 32, 64, torch.device("cpu"), ["natural", "uat"],
                                         False)
    assert set(times) == {"natural", "uat"} and all(seconds > 0 for seconds in times.values())
