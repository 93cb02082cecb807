"""Task-level bookkeeping: the pipeline's worst case over attacks and classes; what a run hands to the tracker."""

from __future__ import annotations

import pytest
import torch

from cbuap_runner.context import Context
from cbuap_runner.errors import UserError
from cbuap_runner.perturbations import restart_generator
from cbuap_runner.record import RunRecord
from cbuap_runner.tasks import TASKS, worst_case
from helpers import TINY


def test_worst_class_is_the_minimum_over_every_attack_and_class():
    per_attack = {
        "sgd_uap": {"adv_acc": 0.30, "per_class_adv_acc": [0.20, 0.40, None]},  # worst on average
        "uap": {"adv_acc": 0.50, "per_class_adv_acc": [0.60, 0.05, None]},  # holds the worst class
        "cb_uap": {"adv_acc": 0.40, "per_class_adv_acc": [0.10, 0.70, None]},
    }
    w = worst_case(per_attack)
    assert (w["worst_attack"], w["worst_adv_acc"]) == ("sgd_uap", 0.30)
    assert (w["worst_class_adv_acc"], w["worst_class_attack"], w["worst_class"]) == (0.05, "uap", 1)
    assert w["per_class_worst_adv_acc"] == [0.10, 0.05, None]


class RecordingTracker:
    """Stands in for the tracker: remembers the images and tables an attack run hands over."""

    def __init__(self) -> None:
        self.images: dict = {}
        self.tables: dict = {}

    def log(self, metrics, step=None) -> None:
        pass

    def log_images(self, images) -> None:
        self.images.update(images)

    def log_artifact(self, path, name, type, metadata=None) -> None:
        pass

    def log_table(self, name, rows) -> None:
        self.tables[name] = rows


def test_an_attack_run_hands_its_figures_and_result_table_to_the_tracker(validated, tmp_path):
    cfg = validated([*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "attack=sgd_uap"])
    tracker = RecordingTracker()
    metrics = TASKS["attack"].run(Context(cfg, RunRecord(tmp_path), torch.device("cpu"), tracker))
    assert set(tracker.images) == {"perturbation", "label_hist"} and all(p.is_file() for p in tracker.images.values())
    assert tracker.tables["result"][0]["fooling_rate"] == metrics["fooling_rate"]


def test_restarts_keep_the_crafting_with_the_best_validation_fooling_rate(validated, tmp_path):
    base = [*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "attack=sgd_uap",
            "attack.init=uniform"]

    def attack(*extra: str, name: str) -> dict:
        cfg = validated([*base, *extra])
        return TASKS["attack"].run(Context(cfg, RunRecord(tmp_path / name), torch.device("cpu"), RecordingTracker()))

    single = attack(name="single")
    several = attack("attack.restarts=3", name="several")
    rates = several["restart_val_fooling_rates"]
    assert len(rates) == 3 and len(set(rates)) > 1  # each restart draws its own start and image order
    assert several["best_restart"] == rates.index(max(rates)) and several["val_fooling_rate"] == max(rates)
    assert rates[0] == single["val_fooling_rate"]  # the first restart crafts as a run without restarts
    assert several["craft_images_processed"] == 3 * single["craft_images_processed"]
    assert "best_restart" not in single and single["craft_continued_from"] is None


def test_a_crafting_starts_from_a_given_perturbation_and_its_record_names_the_file(validated, tmp_path):
    from cbuap_runner.provenance import file_sha256

    base = [*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "attack=sgd_uap"]

    def attack(*extra: str, name: str) -> tuple[dict, Context]:
        ctx = Context(validated([*base, *extra]), RunRecord(tmp_path / name), torch.device("cpu"), RecordingTracker())
        return TASKS["attack"].run(ctx), ctx

    attack(name="source")
    given = tmp_path / "source" / "perturbation.pt"
    start_delta = torch.load(given, weights_only=False)["delta"]
    half = float(start_delta.abs().max()) / 2
    # steps too small to move δ: what is crafted is the given start, projected into this run's smaller ball
    _, ctx = attack(f"attack.start={given}", f"attack.eps={half}", "attack.step_size=1e-9", name="started")
    crafted = torch.load(tmp_path / "started" / "perturbation.pt", weights_only=False)["delta"]
    assert float(start_delta.abs().max()) > half  # the projection has work to do
    assert torch.allclose(crafted, start_delta.clamp(-half, half), atol=1e-6)
    assert ctx.provenance["start"]["sha256"] == file_sha256(given) and ctx.provenance["start"]["attack"] == "sgd_uap"
    _, plain = attack(f"attack.eps={half}", "attack.step_size=1e-9", name="plain")  # from zero it stays near zero
    assert float(torch.load(tmp_path / "plain" / "perturbation.pt", weights_only=False)["delta"].abs().max()) < 1e-6
    assert "start" not in plain.provenance
    class_wise = validated([*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "attack=cw_uap",
                            f"attack.start={given}"])
    with pytest.raises(UserError, match=r"^attack\.start=.*: holds one δ for every image; cw_uap crafts one δ per class"):
        TASKS["attack"].run(Context(class_wise, RunRecord(tmp_path / "cw"), torch.device("cpu"), RecordingTracker()))
    with pytest.raises(UserError, match=r"^attack\.start='.*missing\.pt': no such file"):  # the key that named it
        attack(f"attack.start={tmp_path / 'missing.pt'}", name="missing")


def test_restart_streams_are_the_seed_then_independent_draws():
    first = [torch.rand(4, generator=restart_generator(5, r)) for r in range(3)]
    assert torch.equal(first[0], torch.rand(4, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(first[1], first[2]) and not torch.equal(first[0], first[1])
    assert torch.equal(first[2], torch.rand(4, generator=restart_generator(5, 2)))


def test_saved_predictions_reproduce_the_record_metrics(validated, tmp_path):
    import numpy as np

    from cbuap_runner.report.bootstrap import METRICS, load_predictions

    cfg = validated([*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "attack=sgd_uap",
                     "eval.save_predictions=true"])
    metrics = TASKS["attack"].run(Context(cfg, RunRecord(tmp_path / "run"), torch.device("cpu"), RecordingTracker()))
    assert metrics["predictions_file"] == "predictions.npz"
    saved = load_predictions({"metrics": metrics, "_path": str(tmp_path / "run")})
    assert len(saved.label) == metrics["num_images"] == 64
    whole = np.arange(64)[None, :]
    for name, fn in METRICS.items():
        assert fn(saved, whole)[0] == pytest.approx(metrics[name]), name


def test_a_pipelines_saved_predictions_reproduce_its_worst_case(validated, tmp_path):
    import numpy as np

    from cbuap_runner.report.bootstrap import clean_accuracy, load_defence_predictions, worst_case_accuracy

    cfg = validated([*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "task=pipeline",
                     "pipeline.attacks=[sgd_uap,cb_uap,cw_uap]", "eval.save_predictions=true"])
    metrics = TASKS["pipeline"].run(Context(cfg, RunRecord(tmp_path / "run"), torch.device("cpu"), RecordingTracker()))
    saved = load_defence_predictions({"metrics": metrics, "_path": str(tmp_path / "run")})
    assert sorted(saved) == ["cb_uap", "sgd_uap"]  # the class-wise UAP is not in the worst case
    whole = np.arange(metrics["num_images"])[None, :]
    assert worst_case_accuracy(saved, whole)[0] == pytest.approx(metrics["worst_adv_acc"])
    assert clean_accuracy(saved["sgd_uap"], whole)[0] == pytest.approx(metrics["clean_acc"])


def test_fine_tuning_records_its_starting_weights_and_warns_when_they_saw_other_data(validated, tmp_path, caplog):
    base = [*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "task=train"]

    def train(name: str, *extra: str) -> Context:
        ctx = Context(validated([*base, *extra]), RunRecord(tmp_path / name), torch.device("cpu"), RecordingTracker())
        TASKS["train"].run(ctx)
        return ctx

    start = train("start").provenance["model"]
    tuned = train("tuned", f"training.init_checkpoint={tmp_path / 'start' / 'model.pt'}").provenance
    assert tuned["init_checkpoint"]["sha256"] == start["sha256"] and tuned["init_checkpoint"]["source"] == "init_checkpoint"
    assert tuned["init_checkpoint"]["data"] == tuned["data"]["fingerprint"] and "other data" not in caplog.text
    other = train("other", f"training.init_checkpoint={tmp_path / 'start' / 'model.pt'}", "dataset.synthetic_size=320")
    assert other.provenance["init_checkpoint"]["data"] != other.provenance["data"]["fingerprint"]
    assert "start/model.pt was trained on other data" in caplog.text


def test_clean_evaluation_reports_the_training_cost_its_model_file_holds(validated, tmp_path):
    base = [*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "task=evaluate"]

    def evaluate(name: str, *extra: str) -> dict:
        cfg = validated([*base, *extra])
        return TASKS["evaluate"].run(Context(cfg, RunRecord(tmp_path / name), torch.device("cpu"), RecordingTracker()))

    trained = evaluate("trained")  # trains the model first, then evaluates it
    stored = torch.load(tmp_path / "trained" / "model.pt", weights_only=True)["metrics"]
    assert trained["train_seconds"] == stored["train_seconds"] > 0 and trained["epochs"] == stored["epochs"]
    cached = evaluate("cached")  # the cached copy says the same
    assert (cached["train_seconds"], cached["epochs"]) == (trained["train_seconds"], trained["epochs"])


def test_an_attack_loads_the_network_a_train_run_left_in_the_cache(validated, tmp_path):
    base = [*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / 'cache'}", "attack=sgd_uap"]

    def run(task: str, name: str) -> Context:
        ctx = Context(validated([*base, f"task={task}"]), RunRecord(tmp_path / name), torch.device("cpu"),
                      RecordingTracker())
        TASKS[task].run(ctx)
        return ctx

    trained = run("train", "train")
    attacked = run("attack", "attack")
    assert trained.provenance["model"]["source"] == "trained" and attacked.provenance["model"]["source"] == "cache"
    assert attacked.provenance["model"]["sha256"] == trained.provenance["model"]["sha256"]  # the same file
    assert not (tmp_path / "attack" / "model.pt").exists()  # nothing trained again


def test_a_run_records_how_long_it_waited_for_another_job_to_train_its_model(validated, tmp_path):
    import json
    import shutil
    import threading
    import time

    from cbuap_runner.lease import LEASE_FILE, _new_record

    def context(cache: str, task: str, name: str) -> Context:
        cfg = validated([*TINY, "device=cpu", "progress=off", f"cache_dir={tmp_path / cache}", f"task={task}",
                         "attack=sgd_uap"])
        return Context(cfg, RunRecord(tmp_path / name), torch.device("cpu"), RecordingTracker())

    trainer = context("first", "train", "train")
    TASKS["train"].run(trainer)
    trained = next((tmp_path / "first" / "models").rglob("model.pt"))
    slot = tmp_path / "second" / trained.relative_to(tmp_path / "first")
    slot.parent.mkdir(parents=True)
    (slot.parent / LEASE_FILE).write_text(json.dumps(_new_record("another job")))  # alive: this very process

    def finish_training() -> None:  # the other job fills the slot and leaves
        time.sleep(1.5)
        shutil.copyfile(trained, slot)
        (slot.parent / LEASE_FILE).unlink()

    other = threading.Thread(target=finish_training)
    other.start()
    waiter = context("second", "attack", "attack")
    TASKS["attack"].run(waiter)
    other.join()
    assert waiter.provenance["model"]["source"] == "cache" and 1.5 <= waiter.record.waited_seconds < 30, waiter.record.waited_seconds
    assert trainer.record.waited_seconds < 1.0  # nobody held its slot
