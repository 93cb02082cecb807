"""A multi-objective study's records as its Pareto front (`--kind pareto`): the non-dominated trials on validation
(fooling rate, fooled-label entropy, both maximised), the same trials' test metrics beside, SGD-UAP's reference
point, claim 1's region and the hypervolume history that shows whether the front stopped moving.

Reads the records a study writes (`python -m cbuap_runner.study`, study.py): trial runs (attack=cb_uap) in
`trials/<number>/` and the reference run (attack=sgd_uap). The front is chosen on validation only (Deb et al.,
IEEE TEC 2002, for non-domination); the test columns are reported, never chosen on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..io import write_text
from .claims import Thresholds
from .figures import pyplot, save_figure
from .formats import fmt_number
from .frontier import front_indices, front_stable, hypervolume_history, last_quarter_change
from .networks import check_groups, unproven
from .records import NoRecords, metric
from .rows import choose_balanced

OBJECTIVES = ("val_fooling_rate", "val_fooled_label_entropy")  # a study's, maximised (perturbations.VAL_METRICS)
TEST = ("fooling_rate", "fooled_label_entropy")  # their test counterparts, reported beside
TRIAL_ATTACK, REFERENCE_ATTACK = "cb_uap", "sgd_uap"
REFERENCE_POINT = (0.0, 0.0)
SETTING_PREFIX = "attack.balance."
FIGURE = "pareto.png"
RUNNING, ABANDONED = "running", "abandoned"  # a trial in progress; one whose process stopped before it ended


@dataclass(frozen=True)
class Trial:
    number: int
    status: str  # completed, or why it counts as failed (its record's status)
    val: tuple[float, float] | None  # the objectives; None for a failed trial or a non-finite objective
    test: tuple[float | None, float | None]
    setting: str  # the trial's attack.balance overrides
    where: str = ""  # its run directory under the study's folder (the record's `_dir`)


def _number(record: Mapping[str, Any], fallback: int) -> int:
    name = Path(str(record.get("_dir", ""))).name
    return int(name) if name.isdigit() else fallback


def _pair(record: Mapping[str, Any], names: Sequence[str]) -> tuple[float | None, float | None]:
    return metric(record, names[0]), metric(record, names[1])


def _setting(record: Mapping[str, Any]) -> str:
    overrides = [str(o).lstrip("+") for o in record.get("overrides") or []]
    return " ".join(o.removeprefix(SETTING_PREFIX) for o in overrides if o.startswith(SETTING_PREFIX))


def study_trials(records: Sequence[Mapping[str, Any]]) -> list[Trial]:
    """The trial runs, by trial number; a run that did not complete or lacks a finite objective has `val` None. A
    study runs one trial at a time, so only the last can still be running: an earlier record left `running` is a
    trial whose process was stopped (the study marked it failed when it continued), `abandoned` here."""
    trials = []
    for i, record in enumerate(r for r in records if r.get("attack") == TRIAL_ATTACK and r.get("task") == "attack"):
        val = _pair(record, OBJECTIVES)
        ok = record.get("status") == "completed" and None not in val
        trials.append(Trial(_number(record, i), str(record.get("status")) if ok or record.get("status") != "completed"
                            else "no finite objective", val if ok else None, _pair(record, TEST), _setting(record),
                            str(record.get("_dir", ""))))
    trials.sort(key=lambda t: t.number)
    return [replace(t, status=ABANDONED) if t.status == RUNNING and t is not trials[-1] else t for t in trials]


def reference_point(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """SGD-UAP's validation and test metrics (the mean over its completed runs)."""
    runs = [r for r in records if r.get("attack") == REFERENCE_ATTACK and r.get("status") == "completed"]
    out = {}
    for name in (*OBJECTIVES, *TEST):
        values = [v for v in (metric(r, name) for r in runs) if v is not None]
        if not values:
            raise NoRecords(f"--kind pareto: no completed SGD-UAP run with {name} (the study's reference run)")
        out[name] = sum(values) / len(values)
    return out


@dataclass(frozen=True)
class Front:
    trials: list[Trial]
    front: list[Trial]  # non-dominated on validation, by fooling rate descending
    reference: dict[str, float]
    bar: Thresholds
    history: list[float]  # the validation front's hypervolume after each trial
    network_note: str = ""  # networks.unproven: model files taken for one network without a weights hash

    def in_region(self, point: tuple[float | None, float | None], split: int) -> bool:
        """Claim 1's region around SGD-UAP's point on the split (0: validation, 1: test)."""
        fr, fle = point
        ref_fr, ref_fle = self.reference[(OBJECTIVES, TEST)[split][0]], self.reference[(OBJECTIVES, TEST)[split][1]]
        return (fr is not None and fle is not None and fr >= ref_fr - self.bar.fooling_rate_loss
                and fle >= ref_fle + self.bar.fooled_entropy_gain)


def check_one_network(records: Sequence[Mapping[str, Any]]) -> None:
    """ValueError when the study's runs used more than one network, set of weights or data (networks.py says how
    they are compared): a front compares settings on one model, and a relaunch that trained it anew, or with another
    seed, must not join the earlier trials."""
    check_groups({"--kind pareto: the study's runs": records}, "a front compares settings on one")


def pareto_front(records: Sequence[Mapping[str, Any]], bar: Thresholds) -> Front:
    check_one_network(records)
    trials = study_trials(records)
    if not trials:
        raise NoRecords(f"--kind pareto: no attack={TRIAL_ATTACK} trial records (run python -m cbuap_runner.study)")
    done = [t for t in trials if t.val is not None]
    front = [done[i] for i in front_indices([t.val for t in done])]
    return Front(trials, front, reference_point(records), bar,
                 hypervolume_history([t.val for t in trials], REFERENCE_POINT), unproven(records))


def _choose(f: Front, done: Sequence[Trial]) -> Trial:
    floor = f.reference[OBJECTIVES[0]] - f.bar.tuning_fooling_margin
    return choose_balanced(done, lambda t: t.val[0], lambda t: t.val[1], floor)


def completed(f: Front) -> list[Trial]:
    """The trials with finite objectives, by number: what the front and the stopping rule count."""
    return [t for t in f.trials if t.val is not None]


def chosen_trial(f: Front) -> Trial | None:
    """The trial chosen on validation by the tuning rule (rows.choose_balanced: the highest validation fooled-label
    entropy within claims.tuning_fooling_margin of SGD-UAP's validation fooling rate, else the strongest); the
    point the claim-1 tables run CB-UAP at. None without a completed trial."""
    done = completed(f)
    return _choose(f, done) if done else None


def chosen_history(f: Front) -> list[int]:
    """The number of the trial the rule would choose after each completed trial in turn."""
    done = completed(f)
    return [_choose(f, done[:k]).number for k in range(1, len(done) + 1)]


def completed_history(f: Front) -> list[float]:
    """The validation front's hypervolume after each completed trial in turn."""
    return [h for t, h in zip(f.trials, f.history) if t.val is not None]


def chosen_text(f: Front) -> str:
    """The chosen trial in one sentence."""
    chosen = chosen_trial(f)
    rule = (f"the highest validation fooled-label entropy among the trials whose validation fooling rate is at most "
            f"{f.bar.tuning_fooling_margin * 100:g} points below SGD-UAP's, else the strongest")
    if chosen is None:
        return f"Chosen on validation ({rule}): none (no completed trial)."
    return (f"Chosen on validation ({rule}): trial {chosen.number}, validation {_num(chosen.val[0])} / "
            f"{_num(chosen.val[1])}, test {_num(chosen.test[0])} / {_num(chosen.test[1])} (fooling rate / fooled-label "
            f"entropy); setting: {chosen.setting or 'the defaults'}.")


def _num(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else fmt_number(value)


def summary_lines(f: Front) -> list[str]:
    """The trial count, SGD-UAP's point, the claim's region and the hypervolume evidence, one sentence each."""
    done = len(completed(f))
    running = sum(t.status == RUNNING for t in f.trials)  # a live study's trial in progress
    distinct = len({t.val for t in f.front})  # a repeated setting gives its original's point again
    ref, bar = f.reference, f.bar
    counts = f"{done} completed, {len(f.trials) - done - running} failed" + (f", {running} running" if running else "")
    lines = [f"{len(f.trials)} trials ({counts}); the validation front holds {len(f.front)} "
             f"({distinct} distinct points).",
             f"SGD-UAP: validation fooling rate {_num(ref[OBJECTIVES[0]])}, fooled-label entropy "
             f"{_num(ref[OBJECTIVES[1]])}; test {_num(ref[TEST[0]])}, {_num(ref[TEST[1]])}.",
             f"Claim 1's region: fooled-label entropy at least {bar.fooled_entropy_gain} above SGD-UAP's with at most "
             f"{bar.fooling_rate_loss * 100:g} points of fooling rate lost; front trials in it on validation: "
             f"{_in_region_text(f, 0)}; of those, on test too: {_in_region_text(f, 1, validated=True)}."]
    lines.append(chosen_text(f))
    lines.append(_evidence_text(f))
    lines.append(stability_text(f))
    return lines + ([f.network_note] if f.network_note else [])


def _evidence_text(f: Front) -> str:
    """The hypervolume's change and how long the chosen trial has held, over the last quarter of completed runs."""
    history = completed_history(f)
    hv = f"Hypervolume of the validation front above {REFERENCE_POINT}: {_num(f.history[-1])}"
    change = last_quarter_change(history)
    if change is None:
        return f"{hv} (fewer than 4 completed trials: no change over the last quarter)."
    quarter, gain = change
    relative = gain / history[-1] if history[-1] > 0 else 0.0
    chosen = chosen_history(f)
    since = next(k for k in range(len(chosen), 0, -1) if k == 1 or chosen[k - 2] != chosen[-1])
    return (f"{hv}; over the last quarter of the completed trials ({quarter}) it changed by {_num(gain)} "
            f"({relative * 100:.2f}% of its final value); the same trial has been chosen for the last "
            f"{len(chosen) - since + 1} of the {len(chosen)} completed trials.")


def is_stable(f: Front) -> bool:
    """The front has stopped moving by the manifest's rule (never without one): enough completed trials, the
    hypervolume nearly flat over the last quarter of them and the chosen trial the same throughout it."""
    if not f.bar.has_stopping_rule:
        return False
    history = completed_history(f)
    if not front_stable(history, f.bar.front_stable_gain, f.bar.front_min_runs):
        return False
    quarter = len(history) // 4
    return len(set(chosen_history(f)[-1 - quarter:])) == 1


def stability_text(f: Front) -> str:
    """The stopping rule and whether the front meets it, in one sentence."""
    if not f.bar.has_stopping_rule:
        return "Stopping rule: none declared (claims.front_stable_gain and claims.front_min_runs of the manifest)."
    rule = (f"the study holds at least {f.bar.front_min_runs} completed trial runs, and over the last quarter of "
            f"them the hypervolume gained less than {f.bar.front_stable_gain * 100:g}% of its value and the chosen "
            f"trial stayed the same")
    return f"Stopping rule ({rule}): {'met, the front is stable' if is_stable(f) else 'not met, the front still moves'}."


def _in_region_text(f: Front, split: int, validated: bool = False) -> str:
    chosen = [t for t in f.front if (not validated or f.in_region(t.val, 0)) and f.in_region(
        t.val if split == 0 else t.test, split)]
    return ", ".join(str(t.number) for t in chosen) or "none"


COLUMNS = ("trial", "val_fooling_rate", "val_fooled_label_entropy", "fooling_rate", "fooled_label_entropy",
           "in_claim_region_val", "in_claim_region_test", "setting")


def _cells(f: Front, t: Trial) -> list[str]:
    return [str(t.number), _num(t.val[0]), _num(t.val[1]), _num(t.test[0]), _num(t.test[1]),
            "yes" if f.in_region(t.val, 0) else "no", "yes" if f.in_region(t.test, 1) else "no", t.setting]


def to_markdown(f: Front) -> str:
    lines = ["Pareto front of the study on validation (fooling rate, fooled-label entropy, both maximised); the test "
             "columns are the same trials' test metrics.", "", *summary_lines(f), "",
             "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(f, t)) + " |" for t in f.front]
    return "\n".join(lines) + "\n"


def to_csv(f: Front) -> str:
    quote = lambda text: f'"{text}"' if "," in text else text  # noqa: E731
    return "\n".join([",".join(COLUMNS), *(",".join(quote(c) for c in _cells(f, t)) for t in f.front)]) + "\n"


def history_csv(f: Front) -> str:
    rows = [f"{t.number},{t.status},{h}" for t, h in zip(f.trials, f.history)]
    return "\n".join(["trial,status,hypervolume", *rows]) + "\n"


def pareto_figure(f: Front, path: Path) -> Path:
    """Left: every completed trial, the validation front, the front's test points, SGD-UAP, claim 1's region (on
    validation). Right: the hypervolume after each trial."""
    plt = pyplot()
    fig, (ax, hv) = plt.subplots(1, 2, figsize=(11, 4.2))
    done = completed(f)
    ax.scatter([t.val[0] for t in done], [t.val[1] for t in done], s=10, c="0.75", label="trials (validation)")
    ax.plot([t.val[0] for t in f.front], [t.val[1] for t in f.front], "o-", c="tab:blue", ms=4,
            label="front (validation)")
    tested = [t for t in f.front if None not in t.test]
    ax.scatter([t.test[0] for t in tested], [t.test[1] for t in tested], marker="x", c="tab:orange",
               label="front trials (test)")
    ref = f.reference
    ax.scatter([ref[OBJECTIVES[0]]], [ref[OBJECTIVES[1]]], marker="*", s=140, c="k", label="SGD-UAP (validation)")
    ax.scatter([ref[TEST[0]]], [ref[TEST[1]]], marker="*", s=140, facecolors="none", edgecolors="k",
               label="SGD-UAP (test)")
    x0, y0 = ref[OBJECTIVES[0]] - f.bar.fooling_rate_loss, ref[OBJECTIVES[1]] + f.bar.fooled_entropy_gain
    top = max([y0, *(t.val[1] for t in done), *(v for t in tested for v in t.test[1:])]) * 1.05 + 0.05
    ax.fill_between([x0, 1.0], y0, top, color="tab:green", alpha=0.15, label="claim 1's region (validation)")
    ax.set(xlabel="fooling rate", ylabel="fooled-label entropy", title="strength against spread")
    ax.legend(fontsize=7)
    hv.plot([t.number for t in f.trials], f.history, c="tab:blue")
    hv.set(xlabel="trial", ylabel="hypervolume of the validation front", title="does the front still move?")
    return save_figure(fig, path)


def write_pareto(records: Sequence[Mapping[str, Any]], out: Path, bar: Thresholds, figures: bool) -> list[Path]:
    """`out/pareto.md`, `pareto.csv` (the front), `pareto_hypervolume.csv` and (with `figures`) `pareto.png`."""
    f = pareto_front(records, bar)
    written = []
    for name, text in (("pareto.md", to_markdown(f)), ("pareto.csv", to_csv(f)),
                       ("pareto_hypervolume.csv", history_csv(f))):
        write_text(out / name, text)
        written.append(out / name)
    if figures:
        written.append(pareto_figure(f, out / FIGURE))
    return written
