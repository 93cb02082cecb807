"""Every config option composes and validates; the schema rejects bad values at start-up."""

from __future__ import annotations

import re

import pytest

from cbuap_runner.attacks import ATTACKS
from cbuap_runner.data import DATASETS
from cbuap_runner.errors import UserError, describe
from cbuap_runner.models import model_options
from cbuap_runner.tasks import TASKS
from cbuap_runner.training import DEFENCES
from helpers import REPO, compose_config


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes(dataset, validated):
    extra = ["dataset.root=/tmp/folders", "dataset.num_classes=5"] if dataset == "image_folder" else []
    cfg = validated([f"dataset={dataset}", *extra])
    assert cfg.dataset.name == dataset
    assert cfg.attack.eps == cfg.dataset.eps  # the dataset carries the default budget


REQUIRED = {"torchvision": ["model.arch=resnet18"], "timm": ["model.arch=resnet18"],
            "robustbench": ["model.arch=Wong2020Fast"], "module": ["model.target=pkg.Net"],
            "scripted": ["model.path=x.pt"]}


@pytest.mark.parametrize("group,options", [("model", model_options()), ("attack", ATTACKS), ("training", DEFENCES)])
def test_every_option_composes(group, options, validated):
    for option in options:
        cfg = validated([f"{group}={option}", *REQUIRED.get(option, [])])
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
    ("training=uat training.sigma=2", "training.sigma"),
    ("device=tpu", "device"),
    ("eval.num_images=0", "eval.num_images"),
    ("attack.restarts=0", "attack.restarts"),
    ("attack.start=delta.pt attack.restarts=2", "attack.start"),  # every restart would start from one δ
    ("task=pipeline attack.start=delta.pt", "attack.start"),  # one file cannot start every attack of a pipeline
    ("attack=sgd_uap attack.init=uniform attack.num_starts=2 attack.start=delta.pt", "attack.num_starts"),
    ("training=cb_uat training.adversary.restarts=2", "training.adversary.restarts"),
    ("resume=yes", "resume"),
    ("resume=0", "resume"),
])
def test_out_of_range_values_name_the_key(override, key, validated):
    with pytest.raises(UserError, match=f"^{key.replace('.', '[.]')}="):
        validated(override.split())


@pytest.mark.parametrize("override", ["attack.norm=l3", "attack=uap attack.deepfool.batching=lazy",
                                      "attack.balance.penalty=l1", "training.schedule=linear",
                                      "training=cb_uat training.pool.refresh_unit=batch", "progress=maybe"])
def test_closed_choices_are_enums_refused_when_composing(override):
    key, value = override.split()[-1].split("=")
    with pytest.raises(Exception) as refused:
        compose_config(override.split())
    assert describe(refused.value).startswith(f"{key}={value!r}: must be one of ")


@pytest.mark.parametrize("overrides,line", [
    (["attack=sgd_uap", "attack.balance.lambda_div=1"], "attack.balance: attack=sgd_uap has no such key; attack=cb_uap has it"),
    (["attack=sgd_uap", "+attack.balance.lambda_div=1"], "attack.balance: attack=sgd_uap has no such key; attack=cb_uap has it"),
    (["attack=uap", "attack.target=1"], "attack.target: attack=uap has no such key; attack=sgd_uap, cb_uap have it"),
    (["training=natural", "training.sigma=0.5"],
     "training.sigma: training=natural has no such key; training=pgd_at, uat, fast_uat, sat, cw_uat, cb_uat have it"),
    (["training=uat", "training.adversary.balance.lambda_div=1"],
     "training.adversary.balance: training=uat has no such key; training=cb_uat has it"),
    (["dataset=cifar10", "dataset.synthetic_size=9"], "dataset.synthetic_size: dataset=cifar10 has no such key; dataset=synthetic has it"),
    (["+attack.nope=1"], "attack.nope: unknown config key"),
])
def test_a_key_the_option_lacks_is_one_line_naming_the_options_that_have_it(overrides, line, validated):
    with pytest.raises(Exception) as refused:
        validated(overrides)
    assert describe(refused.value).startswith(line)


def test_an_option_has_exactly_its_schema(validated):
    """attack=sgd_uap composes to SGD-UAP's keys, not every attack's."""
    from dataclasses import fields

    for name, spec in ATTACKS.items():
        cfg = validated([f"attack={name}"])
        assert type(cfg.attack) is spec.schema
        assert {f.name for f in fields(cfg.attack)} == {f.name for f in fields(spec.schema)}
    assert not hasattr(validated(["attack=sgd_uap"]).attack, "balance")


def test_the_name_alone_does_not_switch_the_option(validated):
    with pytest.raises(UserError, match=r"^attack.name='cb_uap': an option's name is set by choosing the option"):
        validated(["attack=sgd_uap", "attack.name=cb_uap"])


@pytest.mark.parametrize("overrides,message", [
    (["task=pipeline", "pipeline.attacks=[sgd_uap,fgsm]"], "pipeline.attacks='fgsm': must be one of"),
    (["task=pipeline", "pipeline.attacks=[]"], "pipeline.attacks=[]: must name at least one attack"),
    (["task=pipeline", "pipeline.attacks=[uap,uap]"], "must name at least one attack, each once"),
    (["task=pipeline", "pipeline.attacks=[cw_uap]"], "needs a universal attack"),
    (["task=attack", "pipeline.attacks=[uap]"], "pipeline.attacks=['uap']: task=attack crafts no pipeline"),
])
def test_pipeline_attacks_are_checked(overrides, message, validated):
    with pytest.raises(UserError, match=re.escape(message)):
        validated(overrides)


def test_rows_name_config_keys_or_groups(validated):
    cfg = validated(["rows=[attack.name,attack.eps,table/tune]"])
    assert cfg.rows == ["attack.name", "attack.eps", "table/tune"]
    for key in ("seed", "attack.epz"):
        with pytest.raises(UserError, match=re.escape(f"rows={key!r}: must name config keys other than seed")):
            validated([f"rows=[attack.name,{key}]"])


@pytest.mark.parametrize("table", sorted(p.stem for p in (REPO / "conf" / "table").glob("*.yaml")))
def test_every_table_declares_its_rows(table, validated):
    cfg = validated([f"table={table}"])
    standard = ["task", "dataset.name", "model.name", "attack.name", "training.name", "attack.eps"]
    if cfg.task == "evaluate" and "attack.name" not in cfg.rows:  # scores networks, not perturbations
        standard = [k for k in standard if not k.startswith("attack")]
    assert cfg.rows[:len(standard)] == standard


def test_the_keys_tables_of_method_md_are_generated_from_the_schemas():
    from cbuap_runner.schema_docs import generated_block

    assert generated_block() in (REPO / "docs" / "method.md").read_text()
