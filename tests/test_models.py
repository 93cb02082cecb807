"""Models: every architecture runs on its inputs; checkpoints round-trip and bad files are refused."""

from __future__ import annotations

import pickle

import pytest
import torch

from cbuap_runner.errors import UserError
from cbuap_runner.models import MODELS, build_model, load_model, prepare, save_model


@pytest.mark.parametrize("name", [m for m in MODELS if m != "wrn28_10"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shapes(name, shape):
    model = build_model(name, 10, shape, [0.5] * shape[0], [0.25] * shape[0]).eval()
    with torch.no_grad():
        assert model(torch.rand(2, *shape)).shape == (2, 10)


def test_wrn_builds_and_runs_small_input():
    model = build_model("wrn28_10", 10, (3, 32, 32)).eval()
    assert sum(p.numel() for p in model.parameters()) > 36_000_000  # WRN-28-10 has ~36.5M parameters
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_normalisation_is_inside_the_model():
    model = build_model("small_cnn", 10, (1, 28, 28), [0.3], [0.2])
    x = torch.rand(1, 1, 28, 28)
    assert torch.allclose(model.net((x - 0.3) / 0.2), model(x))


def test_checkpoint_round_trip(tmp_path):
    model = build_model("resnet20", 10, (3, 32, 32), [0.4, 0.5, 0.6], [0.2, 0.2, 0.2]).eval()
    path = tmp_path / "model.pt"
    save_model(str(path), model, {"name": "resnet20"}, "cifar10", 10, (3, 32, 32), {"clean_acc": 0.5})
    blob = torch.load(path, weights_only=True)
    assert blob["input_shape"] == [3, 32, 32] and blob["num_classes"] == 10 and blob["dataset"] == "cifar10"
    again = load_model(str(path))
    assert not again.training
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_file_that_runs_code_when_unpickled_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "model": {"name": "small_cnn"}, "payload": _Evil()}, path, pickle_module=pickle)
    with pytest.raises(UserError, match="refused"):
        load_model(str(path))


def test_perturbation_given_as_model_is_refused(tmp_path):
    path = tmp_path / "perturbation.pt"
    torch.save({"delta": torch.zeros(1, 28, 28), "eps": 0.1}, path)
    with pytest.raises(UserError, match="perturbation file"):
        load_model(str(path))


@pytest.mark.parametrize("content", [b"", b"not a torch file at all"])
def test_empty_or_foreign_file_is_refused(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="model.checkpoint"):
        load_model(str(path))


def test_prepare_compiles_in_place_and_keeps_the_state_dict_keys():
    model = build_model("small_cnn", 10, (1, 28, 28), [0.5], [0.25])
    keys = list(model.state_dict())
    out = prepare(model, channels_last=True, compile=True)
    assert out is model and list(out.state_dict()) == keys  # model.pt files stay loadable by an eager model
    assert model._compiled_call_impl is not None
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)


def test_channels_last_computes_the_same_and_saves_the_same_weights(tmp_path):
    torch.manual_seed(0)
    plain = build_model("resnet20", 10, (3, 32, 32), [0.5] * 3, [0.25] * 3).eval()
    fast = build_model("resnet20", 10, (3, 32, 32), [0.5] * 3, [0.25] * 3).eval()
    fast.load_state_dict(plain.state_dict())
    prepare(fast, channels_last=True)
    seen = []
    fast.net.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(fast(x), plain(x), atol=1e-5)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)  # the batch too, not only the weights
    save_model(str(tmp_path / "model.pt"), fast, {"name": "resnet20"}, "cifar10", 10, (3, 32, 32))
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    for key, value in plain.state_dict().items():  # the file holds the weights, not the run's memory format
        assert saved[key].is_contiguous() and torch.equal(saved[key], value)
