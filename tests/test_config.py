"""Every config option composes and validates; the schema rejects bad values at start-up."""

from __future__ import annotations

import pytest

from cbuap_runner.attacks import ATTACKS
from cbuap_runner.data import DATASETS
from cbuap_runner.errors import UserError, describe
from cbuap_runner.models import MODELS
from cbuap_runner.tasks import TASKS
from cbuap_runner.training import DEFENCES
from helpers import compose_config


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes(dataset, validated):
    extra = ["dataset.root=/tmp/folders", "dataset.num_classes=5"] if dataset == "image_folder" else []
    cfg = validated([f"dataset={dataset}", *extra])
    assert cfg.dataset.name == dataset
    assert cfg.attack.eps == cfg.dataset.eps  # the dataset carries the default budget


@pytest.mark.parametrize("group,options", [("model", MODELS), ("attack", ATTACKS), ("training", DEFENCES)])
def test_every_option_composes(group, options, validated):
    for option in options:
        cfg = validated([f"{group}={option}"])
        assert getattr(cfg, group).name == option


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes(task, validated):
    assert validated([f"task={task}"]).task == task


@pytest.mark.parametrize("logger", ["local", "wandb"])
def test_loggers_compose(logger, validated):
    assert validated([f"logger={logger}"]).logger.name == logger


@pytest.mark.parametrize("override,value", [([], "auto"), (["resume=auto"], "auto"), (["resume=true"], True),
                                            (["resume=false"], False)])
def test_resume_is_auto_unless_set(override, value, validated):
    resume = validated(override).resume
    assert resume == value and type(resume) is type(value)


def test_hydra_settings():
    cfg = compose_config([])
    assert cfg.task == "attack" and cfg.dataset.name == "fashion_mnist" and cfg.attack.name == "cb_uap"


@pytest.mark.parametrize("override,key", [
    ("attack.eps=-1", "attack.eps"),
    ("attack.eps=0", "attack.eps"),
    ("attack.eps=1.5", "attack.eps"),
    ("training.epochs=0", "training.epochs"),
    ("training.batch_size=0", "training.batch_size"),
    ("training.lr=nan", "training.lr"),
    ("attack.target=10", "attack.target"),
    ("attack.step_decay=1.5", "attack.step_decay"),
    ("training.sigma=2", "training.sigma"),
    ("device=tpu", "device"),
    ("eval.num_images=0", "eval.num_images"),
    ("resume=yes", "resume"),
    ("resume=0", "resume"),
])
def test_out_of_range_values_name_the_key(override, key, validated):
    with pytest.raises(UserError, match=f"^{key.replace('.', '[.]')}="):
        validated([override])


@pytest.mark.parametrize("override", ["attack.norm=l3", "attack.deepfool.batching=lazy", "attack.balance.penalty=l1",
                                      "training.schedule=linear", "training.pool.refresh_unit=batch", "progress=maybe"])
def test_closed_choices_are_enums_refused_when_composing(override):
    key, value = override.split("=")
    with pytest.raises(Exception) as refused:
        compose_config([override])
    assert describe(refused.value).startswith(f"{key}={value!r}: must be one of ")
