"""The Python API (cbuap_runner.api): attacks and metrics on a model and tensors or a loader, through public names."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cbuap_runner import api
from cbuap_runner.attacks import attack_config, craft
from cbuap_runner.attacks.cb_uap import BalanceConfig
from cbuap_runner.errors import UserError
from cbuap_runner.metrics import evaluate_perturbation
from toy import K, train_toy_model


@pytest.fixture(scope="module")
def task():
    return train_toy_model()


def test_api_attack_gives_the_delta_of_the_registry_craft(task):
    model, x, y, _, _ = task
    crafted = api.sgd_uap(model, x, y, eps=0.04, passes=3, batch_size=64, seed=5)
    direct = craft(model, x, y, attack_config("sgd_uap", eps=0.04, passes=3, batch_size=64), K,
                   generator=torch.Generator().manual_seed(5))
    assert torch.equal(crafted.delta, direct.delta)
    assert crafted.config.passes == 3 and crafted.record["attack"] == "sgd_uap"
    assert crafted.record["passes"] == direct.passes and crafted.record["history"] == direct.history


def test_a_section_given_as_a_dict_becomes_its_dataclass(task):
    model, x, y, _, _ = task
    crafted = api.craft("cb_uap", model, x, y, eps=0.04, passes=2, batch_size=64, balance={"lambda_div": 0.5})
    assert crafted.config.balance == BalanceConfig(lambda_div=0.5)
    direct = craft(model, x, y, attack_config("cb_uap", eps=0.04, passes=2, batch_size=64,
                                              balance=BalanceConfig(lambda_div=0.5)), K,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(crafted.delta, direct.delta)


def test_a_loader_and_uint8_images_give_the_delta_of_float_tensors(task):
    model, x, y, _, _ = task
    x8 = (x * 255).round().to(torch.uint8)
    loader = DataLoader(TensorDataset(x8, y), batch_size=100, shuffle=False)
    from_loader = api.uap(model, loader, eps=0.04, passes=1, batch_size=64)
    from_tensors = api.uap(model, x8.float() / 255, y, eps=0.04, passes=1, batch_size=64)
    assert torch.equal(from_loader.delta, from_tensors.delta)


def test_several_starts_return_the_best_on_the_validation_images(task):
    model, x, y, xt, yt = task
    crafted = api.sgd_uap(model, x, y, eps=0.04, passes=2, batch_size=64, num_starts=3, init="uniform",
                          val=(xt, yt))
    assert crafted.delta.shape == x.shape[1:]
    rates = crafted.record["start_fooling_rates"]
    assert len(rates) == 3 and rates[crafted.record["best_start"]] == max(rates)


def test_api_evaluate_is_evaluate_perturbation(task):
    model, x, y, xt, yt = task
    delta = api.sgd_uap(model, x, y, eps=0.04, passes=2, batch_size=64).delta
    assert api.evaluate(model, xt, yt, delta) == evaluate_perturbation(model, xt, yt, delta, K, 500)


def test_a_key_the_attack_lacks_is_refused_naming_it(task):
    model, x, y, _, _ = task
    with pytest.raises(UserError, match=r"attack\.balance: attack=sgd_uap has no such key; attack=cb_uap has it"):
        api.sgd_uap(model, x, y, eps=0.04, balance={"lambda_div": 1.0})
    with pytest.raises(UserError, match=r"attack\.passes"):
        api.sgd_uap(model, x, y, eps=0.04, passes=0)
    with pytest.raises(AttributeError):
        api.no_such_attack  # noqa: B018


def test_an_attack_on_a_bare_sequential_imports_no_hydra():
    code = textwrap.dedent("""
        import sys
        import torch
        from torch import nn
        from cbuap_runner import api
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
        x, y = torch.rand(32, 3, 2, 2), torch.arange(32) % 3
        crafted = api.sgd_uap(model, x, y, eps=0.1, passes=1, batch_size=16)
        api.evaluate(model, x, y, crafted.delta)
        print(sorted({m.split(".")[0] for m in sys.modules} & {"hydra"}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
