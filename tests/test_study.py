"""The CB-UAP study (cbuap_runner.study): trials as ordinary runs, a relaunch that continues, failed trials; the
Pareto front and its hypervolume (report.frontier) and `make_tables --kind pareto` (report.pareto)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from cbuap_runner.errors import UserError
from cbuap_runner.report.claims import Thresholds
from cbuap_runner.report.cli import main as make_tables
from cbuap_runner.report.frontier import front_indices, front_stable, hypervolume, hypervolume_history, last_quarter_change
from cbuap_runner.report.pareto import pareto_front
from cbuap_runner.study import trial as trial_run
from cbuap_runner.study.space import parse_space
from cbuap_runner.study.spec import StudySpec, load_spec
from helpers import FAST, REPO, TINY

optuna = pytest.importorskip("optuna")

SPACE = {
    "attack.balance.lambda_div": {"type": "float", "low": 0.01, "high": 2.0, "log": True, "off_value": 0.0},
    "attack.balance.class_reweight": {"type": "choice", "choices": [True, False]},
    "attack.balance.start": {"type": "int", "low": 0, "high": 1},
    "attack.balance.stop": {"type": "int", "low": 1, "high": 2, "after": "attack.balance.start", "off_value": None},
}
BAR = Thresholds(fooled_entropy_gain=0.15, fooling_rate_loss=0.02, tuning_fooling_margin=0.02, front_stable_gain=0.01,
                 front_min_runs=100)


def tiny_spec(tmp_path: Path, trials: int, name: str = "tiny", trial: tuple[str, ...] = ()) -> StudySpec:
    base = ["task=attack", *FAST, *TINY, f"cache_dir={tmp_path / 'cache'}"]
    return StudySpec(name=name, dir=str(tmp_path / "studies"), trials=trials, seed=0, population=2, base=base,
                     trial=["attack=cb_uap", *trial], reference=["attack=sgd_uap"], space=SPACE)


def _states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "trials").rglob("run_summary.json"))}


# ---------------------------------------------------------------- real runs (each trial one process)


def test_study_runs_and_a_relaunch_continues(tmp_path, capsys):
    from cbuap_runner.study.loop import run_study

    study = run_study(tiny_spec(tmp_path, trials=2))
    root = tmp_path / "studies" / "tiny"
    assert _states(study) == ["COMPLETE", "COMPLETE"]
    record = json.loads((root / "trials" / "0000" / "run_summary.json").read_text())
    assert record["status"] == "completed" and record["attack"] == "cb_uap"
    assert any(o.startswith("attack.balance.lambda_div=") for o in record["overrides"])
    before = _snapshot(root)
    assert sorted(before) == ["trials/0000/run_summary.json", "trials/0001/run_summary.json"]

    study = run_study(tiny_spec(tmp_path, trials=3))  # the relaunch: runs trial 2 only
    assert _states(study) == ["COMPLETE"] * 3
    after = _snapshot(root)
    assert {k: after[k] for k in before} == before and "trials/0002/run_summary.json" in after
    assert "reference: validation fooling rate" in capsys.readouterr().out

    assert make_tables([str(root), "--kind", "pareto", "--no-figures"]) == 0
    text = (root / "tables" / "pareto.md").read_text()
    assert "3 trials (3 completed, 0 failed)" in text and "Hypervolume" in text


def test_a_failing_run_is_a_failed_trial_and_the_study_goes_on(tmp_path):
    from cbuap_runner.study.loop import run_study

    # temperature < 1 is refused by the run's start-up checks: every trial's run fails in its own process
    study = run_study(tiny_spec(tmp_path, trials=2, trial=("attack.balance.temperature=0.5",)))
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert "temperature" in trials[0].user_attrs["error"]
    record = json.loads((tmp_path / "studies" / "tiny" / "trials" / "0001" / "run_summary.json").read_text())
    assert record["status"] == "failed"


# ---------------------------------------------------------------- the loop with a stand-in run (no process)


def fake_runner(nan_at: set[int] = frozenset(), fooling_rate=lambda number: 0.5 + 0.01 * number,
                weights=lambda number: "w"):
    """Writes a completed record with made-up objectives: the fooling rate `fooling_rate(trial number)` (NaN for
    the trial numbers in `nan_at`), the fooled-label entropy 1; its network's weights hash `weights(number)`."""

    def run(overrides: list[str], run_dir: Path) -> trial_run.Outcome:
        number = int(run_dir.name) if run_dir.name.isdigit() else -1
        fr = float("nan") if number in nan_at else fooling_rate(number)
        record = {"status": "completed", "task": "attack", "attack": "cb_uap" if number >= 0 else "sgd_uap",
                  "overrides": overrides, "metrics": {"val_fooling_rate": fr, "val_fooled_label_entropy": 1.0,
                                                      "fooling_rate": fr, "fooled_label_entropy": 1.0},
                  "provenance": {"model": {"digest": "key", "weights_fingerprint": weights(number)}}}
        run_dir.mkdir(parents=True)
        (run_dir / "run_summary.json").write_text(json.dumps(record))
        return trial_run.read_outcome(run_dir)

    return run


def test_a_relaunch_on_a_network_trained_anew_stops_after_one_trial(tmp_path):
    from cbuap_runner.study.loop import run_study

    assert len(run_study(tiny_spec(tmp_path, trials=2), runner=fake_runner()).trials) == 2
    retrained = fake_runner(weights=lambda number: "w" if number < 2 else "v")
    with pytest.raises(UserError, match=r"trials/0002 used different weights.*needs a dir of its own"):
        run_study(tiny_spec(tmp_path, trials=6), runner=retrained)
    assert sorted(p.name for p in (tmp_path / "studies" / "tiny" / "trials").iterdir()) == ["0000", "0001", "0002"]
    with pytest.raises(UserError, match="used different weights"):  # and a relaunch runs nothing more
        run_study(tiny_spec(tmp_path, trials=6), runner=retrained)
    assert len(list((tmp_path / "studies" / "tiny" / "trials").iterdir())) == 3


def test_a_nan_objective_is_a_failed_trial(tmp_path):
    from cbuap_runner.study.loop import run_study

    study = run_study(tiny_spec(tmp_path, trials=3), runner=fake_runner({1}))
    assert _states(study) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "no finite" in study.trials[1].user_attrs["error"]


def test_until_stable_stops_the_study_once_its_front_stops_moving(tmp_path, monkeypatch, capsys):
    from cbuap_runner.study import loop
    from cbuap_runner.study.loop import run_study

    runner = fake_runner(fooling_rate=lambda number: 0.5 + 0.01 * number if number < 4 else 0.5)  # 0-3 move it
    monkeypatch.setattr(loop, "manifest_thresholds", lambda: replace(BAR, front_min_runs=8))
    spec = replace(tiny_spec(tmp_path, trials=30), until_stable=True)
    trials = len(run_study(spec, runner=runner).trials)
    runs = sorted(p.name for p in (tmp_path / "studies" / "tiny" / "trials").iterdir())
    # the rule counts runs (a repeated setting is told, not run): at 8, the last quarter gained nothing
    assert len(runs) == 8 and trials < 30 and "the front is stable" in capsys.readouterr().out
    assert len(run_study(spec, runner=runner).trials) == trials  # a relaunch asks for nothing
    assert len(run_study(replace(spec, until_stable=False, trials=trials + 1), runner=runner).trials) == trials + 1


def test_until_stable_without_a_rule_stops_before_any_run(tmp_path, monkeypatch):
    from cbuap_runner.study import loop

    monkeypatch.setattr(loop, "manifest_thresholds", lambda: replace(BAR, front_stable_gain=None, front_min_runs=None))
    ran = []
    with pytest.raises(UserError, match="until_stable: .*declares no stopping rule"):
        loop.run_study(replace(tiny_spec(tmp_path, trials=3), until_stable=True), runner=lambda *a: ran.append(a))
    assert not ran


def test_a_trial_left_running_is_marked_failed_not_rerun(tmp_path):
    from cbuap_runner.study.loop import JOURNAL, open_study, run_study

    spec = tiny_spec(tmp_path, trials=2)
    root = tmp_path / "studies" / "tiny"
    root.mkdir(parents=True)
    open_study(spec, root).ask()  # a process killed mid-trial: asked, never told
    study = run_study(spec, runner=fake_runner())
    assert _states(study) == ["FAIL", "COMPLETE"] and (root / JOURNAL).is_file()
    assert not (root / "trials" / "0000").exists() and (root / "trials" / "0001").is_dir()


def test_a_trial_left_running_whose_run_completed_is_told_its_values(tmp_path):
    from cbuap_runner.study.loop import open_study, run_study

    spec = tiny_spec(tmp_path, trials=2)
    root = tmp_path / "studies" / "tiny"
    root.mkdir(parents=True)
    asked = open_study(spec, root).ask()  # killed between the run's record and the tell
    fake_runner()([], root / "trials" / f"{asked.number:04d}")
    study = run_study(spec, runner=fake_runner())
    assert _states(study) == ["COMPLETE", "COMPLETE"] and study.trials[0].values == [0.5, 1.0]


def test_a_setting_already_run_is_told_its_values_not_run_again(tmp_path):
    from cbuap_runner.study.loop import run_study

    calls = []
    runner = fake_runner()

    def counting(overrides, run_dir):
        calls.append(run_dir.name)
        return runner(overrides, run_dir)

    space = {"attack.balance.class_reweight": {"type": "choice", "choices": [True, False]}}  # two settings only
    spec = tiny_spec(tmp_path, trials=6)
    study = run_study(StudySpec(**{**spec.__dict__, "space": space}), runner=counting)
    repeats = [t for t in study.trials if "same_as" in t.user_attrs]
    assert len(study.trials) == 6 and repeats and len(calls) == 1 + 6 - len(repeats)  # the reference run, then trials
    for t in repeats:
        earlier = study.trials[t.user_attrs["same_as"]]
        assert t.params == earlier.params and t.values == earlier.values
        assert not (tmp_path / "studies" / "tiny" / "trials" / f"{t.number:04d}").exists()


def test_an_existing_trial_directory_is_never_written_into(tmp_path):
    from cbuap_runner.study.loop import run_study

    (tmp_path / "studies" / "tiny" / "trials" / "0000").mkdir(parents=True)
    with pytest.raises(UserError, match="refusing to write over it"):
        run_study(tiny_spec(tmp_path, trials=1), runner=fake_runner())


def test_missing_optuna_is_one_line(monkeypatch):
    from cbuap_runner.study.loop import require_optuna

    monkeypatch.setitem(__import__("sys").modules, "optuna", None)
    with pytest.raises(UserError, match=r"cbuap-runner\[study\]"):
        require_optuna()


def test_spec_and_space_errors_are_one_line(tmp_path):
    assert load_spec("cb_uap_fmnist", ["trials=7"]).trials == 7
    with pytest.raises(UserError, match="no such spec"):
        load_spec("nonesuch")
    with pytest.raises(UserError, match="trials"):
        load_spec("cb_uap_fmnist", ["trials=0"])
    with pytest.raises(UserError, match="log scale"):
        parse_space({"attack.balance.lambda_div": {"type": "float", "low": 0.0, "high": 1.0, "log": True}})
    with pytest.raises(UserError, match="earlier numeric entry"):
        parse_space({"attack.balance.stop": {"type": "int", "low": 1, "high": 2, "after": "attack.balance.start"}})
    assert len(parse_space(load_spec("cb_uap_fmnist").space)) == 16


def test_the_spec_covers_every_balance_key():
    from dataclasses import fields

    from cbuap_runner.attacks.cb_uap import BalanceConfig

    spec = load_spec(str(REPO / "conf" / "study" / "cb_uap_fmnist.yaml"))
    keys = {k.removeprefix("attack.balance.") for k in spec.space}
    assert keys == {f.name for f in fields(BalanceConfig)}


# ---------------------------------------------------------------- the front and its hypervolume


def test_front_and_hypervolume_on_constructed_points():
    points = [(0.9, 1.0), (0.8, 1.5), (0.85, 0.9), (0.5, 2.0), (0.5, 2.0), (0.4, 1.9), (0.95, 0.2)]
    assert front_indices(points) == [6, 0, 1, 3, 4]  # (0.85, 0.9) and (0.4, 1.9) are dominated
    # by x descending: 0.95·0.2 + 0.9·0.8 + 0.8·0.5 + 0.5·0.5
    assert hypervolume(points) == pytest.approx(0.19 + 0.72 + 0.40 + 0.25)
    assert hypervolume([(1.0, 1.0)], reference=(0.5, 0.5)) == pytest.approx(0.25)
    assert hypervolume([(0.4, 1.0)], reference=(0.5, 0.0)) == 0.0
    history = hypervolume_history([(0.5, 1.0), None, (0.5, math.nan), (1.0, 1.0), (0.2, 0.2)])
    assert history == pytest.approx([0.5, 0.5, 0.5, 1.0, 1.0])
    assert last_quarter_change(history) == (1, pytest.approx(0.0))
    assert last_quarter_change(history[:3]) is None


def test_the_front_is_stable_once_its_last_quarter_gains_little():
    moving = [1.0] * 6 + [1.02, 1.05]  # the last quarter (2 runs) gained 0.05 of 1.05
    assert not front_stable(moving, gain=0.01, min_runs=4) and front_stable(moving, gain=0.05, min_runs=4)
    flat = [0.5] * 3 + [1.0] * 9  # the last quarter (3 runs) gained nothing
    assert front_stable(flat, gain=0.01, min_runs=12) and not front_stable(flat, gain=0.01, min_runs=13)
    assert not front_stable([0.0] * 12, gain=0.01, min_runs=4)  # no area yet: not stable


# ---------------------------------------------------------------- make_tables --kind pareto


def _record(folder: str, attack: str, val: tuple[float, float] | None, test: tuple[float, float],
            status: str = "completed", setting: str = "attack.balance.lambda_div=0.5") -> dict:
    metrics = {} if val is None else {"val_fooling_rate": val[0], "val_fooled_label_entropy": val[1],
                                      "fooling_rate": test[0], "fooled_label_entropy": test[1]}
    return {"_dir": folder, "status": status, "task": "attack", "attack": attack, "metrics": metrics,
            "overrides": ["task=attack", setting]}


RECORDS = [
    _record("reference", "sgd_uap", (0.80, 1.00), (0.78, 1.05), setting=""),
    _record("trials/0000", "cb_uap", (0.79, 1.20), (0.77, 1.22)),  # in the region on validation and test
    _record("trials/0001", "cb_uap", (0.70, 1.30), (0.69, 1.31)),  # on the front, too weak
    _record("trials/0002", "cb_uap", (0.60, 1.10), (0.60, 1.10)),  # dominated
    _record("trials/0003", "cb_uap", None, (0.0, 0.0), status="failed"),
    _record("trials/0004", "cb_uap", (0.82, 1.00), (0.81, 0.99)),  # on the front, no spread
]


def test_pareto_front_of_constructed_records():
    f = pareto_front(RECORDS, BAR)
    assert [t.number for t in f.front] == [4, 0, 1]
    assert [t.number for t in f.trials if t.val is None] == [3]
    assert f.in_region(f.front[1].val, 0) and f.in_region(f.front[1].test, 1)
    assert not f.in_region(f.front[2].val, 0) and not f.in_region(f.front[0].val, 0)
    assert f.history == pytest.approx([0.79 * 1.2, 0.79 * 1.2 + 0.7 * 0.1, 0.79 * 1.2 + 0.7 * 0.1,
                                       0.79 * 1.2 + 0.7 * 0.1, 0.82 * 1.0 + 0.79 * 0.2 + 0.7 * 0.1])


def test_make_tables_kind_pareto(tmp_path, capsys):
    for record in RECORDS:
        folder = tmp_path / record["_dir"]
        folder.mkdir(parents=True)
        (folder / "run_summary.json").write_text(json.dumps({k: v for k, v in record.items() if k != "_dir"}))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"claims": {"fooled_entropy_gain": 0.15, "fooling_rate_loss": 0.02,
                                               "tuning_fooling_margin": 0.02, "front_stable_gain": 0.01,
                                               "front_min_runs": 100}}))
    assert make_tables([str(tmp_path), "--kind", "pareto", "--claims", str(manifest)]) == 0
    out = tmp_path / "tables"
    text = (out / "pareto.md").read_text()
    assert "5 trials (4 completed, 1 failed); the validation front holds 3 (3 distinct points)." in text
    assert "front trials in it on validation: 0; of those, on test too: 0." in text
    assert "over the last quarter of the completed trials (1)" in text
    assert "the same trial has been chosen for the last 4 of the 4 completed trials." in text
    assert "at least 100 completed trial runs, and over the last quarter" in text
    assert "not met, the front still moves." in text
    manifest.write_text(json.dumps({"claims": {"fooled_entropy_gain": 0.15, "fooling_rate_loss": 0.02,
                                               "tuning_fooling_margin": 0.02}}))  # a manifest without a study
    assert make_tables([str(tmp_path), "--kind", "pareto", "--claims", str(manifest)]) == 0
    assert "Stopping rule: none declared" in (out / "pareto.md").read_text()
    rows = (out / "pareto.csv").read_text().splitlines()
    assert rows[0].startswith("trial,val_fooling_rate") and [r.split(",")[0] for r in rows[1:]] == ["4", "0", "1"]
    assert (out / "pareto.png").stat().st_size > 0
    assert len((out / "pareto_hypervolume.csv").read_text().splitlines()) == 6
    (tmp_path / "trials" / "0005").mkdir()  # a live study: its next trial's run has begun
    (tmp_path / "trials" / "0005" / "run_summary.json").write_text(json.dumps({**RECORDS[1], "status": "running"}))
    assert make_tables([str(tmp_path), "--kind", "pareto", "--claims", str(manifest), "--no-figures"]) == 0
    assert "6 trials (4 completed, 1 failed, 1 running)" in (out / "pareto.md").read_text()
    (tmp_path / "trials" / "0006").mkdir()  # the study was stopped during 5 and continued: 5 was abandoned
    (tmp_path / "trials" / "0006" / "run_summary.json").write_text(json.dumps({**RECORDS[1], "status": "running"}))
    assert make_tables([str(tmp_path), "--kind", "pareto", "--claims", str(manifest), "--no-figures"]) == 0
    assert "7 trials (4 completed, 2 failed, 1 running)" in (out / "pareto.md").read_text()
    assert "5,abandoned," in (out / "pareto_hypervolume.csv").read_text()
    assert make_tables([str(tmp_path), "--kind", "pareto", "--claims", str(tmp_path / "none.json")]) == 1
    assert "no such manifest" in capsys.readouterr().err


def test_the_command_line_says_one_line(capsys):
    from cbuap_runner.study.__main__ import main

    assert main(["cb_uap_fmnist", "trials=0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "trials=0" in err and len(err.strip().splitlines()) == 1
    assert main([]) == 2
    assert main(["cb_uap_fmnist", "--force"]) == 2 and "only with --choose" in capsys.readouterr().err


def test_the_front_refuses_runs_of_another_network(tmp_path):
    from cbuap_runner.report.pareto import pareto_front, to_markdown

    def record(number, digest="a", weights="w", data="d", status="completed", sha="f", clean_acc=0.9):
        model = {"identity": "same-for-every-seed", "digest": digest, "weights_fingerprint": weights, "sha256": sha}
        return {"status": status, "task": "attack", "attack": "cb_uap" if number >= 0 else "sgd_uap",
                "_dir": f"trials/{number:04d}" if number >= 0 else "reference",
                "provenance": {"model": model if digest else {}, "data": {"fingerprint": data} if data else {}},
                "metrics": {"val_fooling_rate": 0.5, "val_fooled_label_entropy": 0.5, "fooling_rate": 0.5,
                            "fooled_label_entropy": 0.5, "clean_acc": clean_acc}}

    assert len(pareto_front([record(-1), record(0), record(1)], BAR).trials) == 2
    # a run of older code without the weights' hash, and one that failed before it loaded its model, join the rest
    older = record(1, weights=None)
    failed_early = record(2, digest=None, status="failed")
    assert len(pareto_front([record(-1), record(0), older, failed_early], BAR).trials) == 3
    # the same weights in a model file written again (another sha256) join; so do files of older records (no weights
    # hash) of one clean accuracy, which the report says; a network trained again under the same key (same digest)
    # does not, whether the older record hashes its weights or names another file and clean accuracy
    assert len(pareto_front([record(-1), record(0), record(1, sha="g")], BAR).trials) == 2
    unhashed = pareto_front([record(-1, weights=None), record(0, weights=None), record(1, sha="g")], BAR)
    note = unhashed.network_note
    assert "The runs read 2 model files" in note and "(clean accuracy: 0.9000)" in note
    assert unhashed.network_note in to_markdown(unhashed)
    assert pareto_front([record(-1), record(0), record(1)], BAR).network_note == ""
    retrained = record(1, weights="v", sha="g", clean_acc=0.8)
    for name, older, odd in (("network", "w", record(1, digest="b")), ("weights", "w", retrained),
                             ("weights", None, retrained), ("data", "w", record(1, data="e"))):
        with pytest.raises(ValueError, match=f"the study's runs: .*trials/0001 used different {name}"):
            pareto_front([record(-1, weights=older), record(0, weights=older), odd], BAR)


def test_the_stopping_rule_waits_for_the_chosen_trial_to_hold():
    from cbuap_runner.report.pareto import chosen_history, is_stable

    rule = replace(BAR, front_min_runs=8, front_stable_gain=0.05)
    reference = _record("reference", "sgd_uap", (0.80, 1.00), (0.80, 1.00), setting="")
    flat = [_record(f"trials/{i:04d}", "cb_uap", (0.80, 1.20), (0.80, 1.20)) for i in range(7)]
    assert not is_stable(pareto_front([reference, *flat], rule))  # 7 completed runs: too few
    # an eighth run within the margin and of a little more entropy: the hypervolume gains 0.8 % over the last quarter
    # (2 runs), under the 5 % allowed, but the choice moves to it
    moved = _record("trials/0007", "cb_uap", (0.79, 1.21), (0.79, 1.21))
    f = pareto_front([reference, *flat, moved], rule)
    assert chosen_history(f)[-2:] == [0, 7] and not is_stable(f)
    assert is_stable(pareto_front([reference, *flat, _record("trials/0007", "cb_uap", (0.7, 1.0), (0.7, 1.0))], rule))
    # failed runs are not counted: 7 completed and 5 failed do not make the 8 the rule needs
    failed = [_record(f"trials/{i:04d}", "cb_uap", None, (0.0, 0.0), status="failed") for i in range(7, 12)]
    assert not is_stable(pareto_front([reference, *flat, *failed], rule))


def test_sigterm_stops_the_study_after_the_running_trial(tmp_path, capsys):
    import os
    import signal

    from cbuap_runner.study.loop import run_study

    runner = fake_runner()

    def signalled(overrides, run_dir):
        if run_dir.name == "0001":  # a scheduler's time limit arrives while trial 1 runs
            os.kill(os.getpid(), signal.SIGTERM)
        return runner(overrides, run_dir)

    study = run_study(tiny_spec(tmp_path, trials=5), runner=signalled)
    assert _states(study) == ["COMPLETE", "COMPLETE"]  # trial 1 finished and was told; nothing else was asked
    assert "stopped on SIGTERM" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert _states(run_study(tiny_spec(tmp_path, trials=3), runner=fake_runner())) == ["COMPLETE"] * 3


# ---------------------------------------------------------------- the point chosen on validation


def test_the_chosen_trial_follows_the_tuning_rule():
    from cbuap_runner.report.pareto import chosen_trial

    # SGD-UAP's validation fooling rate 0.80: within 0.02 are trials 0 (entropy 1.20) and 4 (1.00)
    assert chosen_trial(pareto_front(RECORDS, BAR)).number == 0
    strict = replace(BAR, tuning_fooling_margin=0.0)
    assert chosen_trial(pareto_front(RECORDS, strict)).number == 4
    stronger_reference = [_record("reference", "sgd_uap", (0.95, 1.0), (0.9, 1.0), setting=""), *RECORDS[1:]]
    assert chosen_trial(pareto_front(stronger_reference, BAR)).number == 4  # none within: the strongest


def test_choose_writes_the_chosen_trials_whole_balance_block(tmp_path):
    import yaml

    from cbuap_runner.study.choose import choose

    studies = tmp_path / "studies" / "tiny"
    for i, record in enumerate(RECORDS):
        folder = studies / record["_dir"]
        folder.mkdir(parents=True)
        body = {**{k: v for k, v in record.items() if k != "_dir"}, "config": {"attack": {"balance": {"start": i}}}}
        (folder / "run_summary.json").write_text(json.dumps(body))
    spec = StudySpec(name="tiny", dir=str(tmp_path / "studies"))
    with pytest.raises(UserError, match="study tiny: Stopping rule .*not met, the front still moves. Continue the "
                                        "study, or add --force"):
        choose(spec, tmp_path / "conf")  # 4 completed trials, and the rule wants 100
    assert not (tmp_path / "conf").exists()
    path = choose(spec, tmp_path / "conf", force=True)
    assert path == tmp_path / "conf" / "table" / "study_point" / "tiny.yaml"
    text = path.read_text()
    assert "\n# Stopping rule (the study holds at least 100 completed trial runs" in text
    assert "not met, the front still moves." in " ".join(text.replace("\n# ", " ").split())
    assert text.startswith("# @package _global_\n") and "trial 0, of the study's 5 trial runs (4 completed)" in text
    block = yaml.safe_load(text)
    assert block["attack"] == {"balance": {"start": 1}}  # trials/0000 is the second record written
    assert block["hydra"]["sweep"]["subdir"] == "${attack.name}_eps${attack.eps}_tiny_seed${seed}"
    with pytest.raises(UserError, match="study empty: .*no such directory"):
        choose(StudySpec(name="empty", dir=str(tmp_path / "studies")), tmp_path / "conf")


def test_the_committed_study_point_is_the_committed_studys_choice(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from cbuap_runner.study.choose import choose

    monkeypatch.chdir(REPO)  # the block names the study folder as the command was given it
    written = choose(load_spec("cb_uap_fmnist", ["dir=docs/results/studies"]), tmp_path)
    committed = REPO / "conf" / "table" / "study_point" / "cb_uap_fmnist.yaml"
    assert written.read_text() == committed.read_text()  # rerun `... cb_uap_fmnist dir=docs/results/studies --choose`
    number = int(written.read_text().split("trial ", 1)[1].split(",")[0])
    record = json.loads((REPO / "docs/results/studies/cb_uap_fmnist/trials" / f"{number:04d}" /
                         "run_summary.json").read_text())
    assert OmegaConf.load(committed).attack.balance == record["config"]["attack"]["balance"]


def test_a_study_point_is_read_by_cb_uap_only(validated):
    from cbuap_runner.errors import describe

    cfg = validated(["attack=cb_uap", "+table/study_point=cb_uap_fmnist"])
    point = __import__("omegaconf").OmegaConf.load(REPO / "conf" / "table" / "study_point" / "cb_uap_fmnist.yaml")
    assert cfg.attack.balance.lambda_div == point.attack.balance.lambda_div
    with pytest.raises(Exception) as refused:
        validated(["attack=sgd_uap", "+table/study_point=cb_uap_fmnist"])
    assert describe(refused.value) == "attack.balance: attack=sgd_uap has no such key; attack=cb_uap has it"


def test_a_second_sigterm_stops_the_study_at_once():
    import os
    import signal

    from cbuap_runner.study.loop import stop_requested

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with stop_requested() as stopping:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stopping() and not seen  # the first one only asks
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == [signal.SIGTERM]  # the second one reaches the handler SIGTERM had before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_spec_extends_another_and_names_its_own_study(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: cb_uap_fmnist\nname: child\nbase: [task=attack]\n")
    spec, parent = load_spec(str(child)), load_spec("cb_uap_fmnist")
    assert (spec.name, spec.base) == ("child", ["task=attack"])
    assert (spec.space, spec.trial, spec.population) == (parent.space, parent.trial, parent.population)
    (tmp_path / "grandchild.yaml").write_text("extends: child.yaml\nname: grandchild\ntrials: 7\n")
    assert load_spec(str(tmp_path / "grandchild.yaml")).base == ["task=attack"]  # a path beside the spec
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text("extends: cb_uap_fmnist\ntrials: 5\n")
    with pytest.raises(UserError, match="unnamed.yaml: extends=cb_uap_fmnist: give the study its own name"):
        load_spec(str(unnamed))
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\nname: loop\n")
    with pytest.raises(UserError, match="extends itself"):
        load_spec(str(loop))
    missing = tmp_path / "missing.yaml"
    missing.write_text("extends: nonesuch\nname: m\n")
    with pytest.raises(UserError, match="missing.yaml: extends=nonesuch: study 'nonesuch': no such spec"):
        load_spec(str(missing))
    assert load_spec("cb_uap_resnet20").space == parent.space


def test_choose_says_one_line_when_the_chosen_record_lacks_its_settings(tmp_path, capsys):
    from cbuap_runner.study.__main__ import main

    studies = tmp_path / "studies" / "bare"
    for record in RECORDS:  # records without a config
        (studies / record["_dir"]).mkdir(parents=True)
        body = {k: v for k, v in record.items() if k != "_dir"}
        (studies / record["_dir"] / "run_summary.json").write_text(json.dumps(body))
    assert main(["cb_uap_fmnist", "name=bare", f"dir={tmp_path / 'studies'}", "--choose", "--force"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trials/0000/run_summary.json: the chosen trial's record holds no" in err
    assert main(["cb_uap_fmnist", "name=none", f"dir={tmp_path / 'studies'}", "--choose"]) == 1
    assert "study none: " in capsys.readouterr().err
