"""The paper's two claims, each answered in one sentence from table rows (or saying which rows are missing).

Claim 1: CB-UAP spreads the labels of the images it fools (fooled-label entropy) over SGD-UAP's by a margin
without losing fooling rate beyond another. Claim 2: CB-UAT beats UAT and CW-UAT on worst-case white-box UAP
accuracy at equal or better clean accuracy. The margins are research policy: the document manifest's `claims`
block sets them (Thresholds). A verdict reads the means; beside it each sentence says what the 95 % intervals say
of the margins (significance.settles): over the seeds where there are two or more, else over one seed's test images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .bootstrap import (
    RESAMPLES,
    Predictions,
    bootstrap_clause,
    load_defence_predictions,
    load_predictions,
    paired_bootstrap,
    paired_defence_bootstrap,
)
from .formats import format_cell
from .networks import check_paired_networks
from .records import counted, hashable
from .rows import metric_cells
from .significance import CLEAR, SHORT, UNSURE, Paired, paired, settles

VERDICT_ENTROPY = "fooled_label_entropy"
VERDICT_REASON = ("Claim 1's verdict reads the fooled-label entropy, the entropy of the labels the attack gives the "
                  "images it fools: that is where a class-balanced attack spreads its victims, while the label entropy "
                  "also counts the images left unfooled, so a weaker attack would gain it for free.")
UAT_FAMILY = ("cb_uat", "uat", "cw_uat")  # claim 2: CB-UAT against the other two
# what 95 % intervals say of claim 1's margins, and of claim 2's (zero: above the rival, clean accuracy not below)
_MARGIN_NOTES = {CLEAR: "both intervals clear their margins", SHORT: "an interval lies wholly short of its margin",
                 UNSURE: "an interval straddles its margin: {who} cannot settle it"}
_ZERO_NOTES = {CLEAR: "both intervals clear zero", SHORT: "an interval lies wholly below zero",
               UNSURE: "an interval straddles zero: {who} cannot settle it"}


@dataclass(frozen=True)
class Thresholds:
    """The manifest's `claims` margins and rules (each a number ≥ 0; a manifest without a study may leave the
    study's stopping rule out)."""

    fooled_entropy_gain: float  # claim 1: CB-UAP's fooled-label entropy at least this above SGD-UAP's
    fooling_rate_loss: float  # claim 1: CB-UAP's fooling rate at most this below SGD-UAP's
    tuning_fooling_margin: float  # the tuning choice: validation fooling rate at most this below SGD-UAP's
    # a study's front has stopped moving: the study holds at least front_min_runs completed trial runs (4 or more: a
    # quarter needs one), and over the last quarter of them its hypervolume gained less than front_stable_gain of its
    # value and the trial chosen on validation stayed the same (report/pareto.py, is_stable)
    front_stable_gain: float | None = None
    front_min_runs: int | None = None

    @property
    def has_stopping_rule(self) -> bool:
        """Whether the manifest declares the study's stopping rule (both of its keys)."""
        return self.front_stable_gain is not None and self.front_min_runs is not None

    @classmethod
    def read(cls, claims: Mapping[str, Any], where: str) -> Thresholds:
        """The margins of a manifest's `claims` block; ValueError naming `where` and the key for a bad one."""
        values = {}
        for spec in fields(cls):
            name, value = spec.name, claims.get(spec.name)
            whole = name == "front_min_runs"  # a count of runs
            if value is None and spec.default is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{where}: claims.{name}={value!r}: must be a number ≥ 0")
            if whole and (value != int(value) or value < 4):
                raise ValueError(f"{where}: claims.{name}={value!r}: must be a whole number, at least 4")
            values[name] = int(value) if whole else value
        if (values.get("front_stable_gain") is None) != (values.get("front_min_runs") is None):
            raise ValueError(f"{where}: claims.front_stable_gain and claims.front_min_runs: give both or neither")
        return cls(**values)


# the committed manifest, whose `claims` block a table of a study's front reads unless told another
DEFAULT_MANIFEST = Path(__file__).resolve().parents[3] / "docs" / "results" / "document.json"


def manifest_thresholds(manifest: str | Path | None = None) -> Thresholds:
    """The margins of a manifest's `claims` block (default: the committed one); ValueError naming a missing file."""
    path = Path(manifest) if manifest is not None else DEFAULT_MANIFEST
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest; pass --claims MANIFEST (a document manifest with a claims block)")
    spec = json.loads(path.read_text())
    return Thresholds.read((spec.get("claims") if isinstance(spec, dict) else None) or {}, str(path))


def matches(row: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    return all(row.get(k) == v for k, v in where.items())


def _mean(row: Mapping[str, Any] | None, metric: str) -> float | None:
    return None if row is None else row.get(metric, (None,))[0]


def _completed(rows: Sequence[Mapping[str, Any]], **where: Any) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["status"] == "completed" and matches(r, where)]


def _find(rows: Sequence[Mapping[str, Any]], **where: Any) -> Mapping[str, Any] | None:
    found = _completed(rows, **where)
    return found[0] if len(found) == 1 else None


def difference(a: Mapping[str, Any], b: Mapping[str, Any], metric: str) -> float | None:
    """b − a of `metric` as a verdict reads it: over the seeds both rows hold where the rows carry their runs (each
    row's mean may rest on seeds the other lacks, a failed run's), else the rows' means; None without a value."""
    if "_records" in a and "_records" in b:
        pair = paired(a, b, metric)
        return None if pair is None else pair.mean
    left, right = _mean(a, metric), _mean(b, metric)
    return None if left is None or right is None else right - left


def _shared_seeds_note(a: Mapping[str, Any], b: Mapping[str, Any], what: str = "the differences") -> str:
    """' (`what` over the seeds both rows hold: …)' where the rows' seeds differ, else ''."""
    if "seeds" not in a or "seeds" not in b or a["seeds"] == b["seeds"]:
        return ""
    shared = [s for s in a["seeds"] if s in b["seeds"]]
    return f" ({what} over the seeds both rows hold: {', '.join(map(str, shared)) or 'none'})"


BALANCE_METRICS = (VERDICT_ENTROPY, "label_entropy", "fooling_rate", "min_class_attack_success_rate")


def _on_seeds(row: Mapping[str, Any], seeds: set[str]) -> Mapping[str, Any]:
    """The row with its runs, n and claim-1 cells narrowed to `seeds` (hashable); the row itself where it holds no
    others."""
    runs = [r for r in row["_records"] if hashable(r.get("seed")) in seeds]
    if len(runs) == len(row["_records"]):
        return row
    return {**row, "_records": runs, "n": len(runs), "seeds": [r.get("seed") for r in runs],
            **metric_cells(runs, BALANCE_METRICS)}


def _shared_seed_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """Both rows narrowed to the seeds both hold, so that a sentence's values are those its differences compare
    (the rows unchanged where they carry no runs or share no seed)."""
    if "_records" not in a or "_records" not in b:
        return a, b
    seeds = ({hashable(r.get("seed")) for r in a["_records"]} & {hashable(r.get("seed")) for r in b["_records"]})
    return (a, b) if not seeds else (_on_seeds(a, seeds), _on_seeds(b, seeds))


def _balance_verdict(sgd: Mapping[str, Any], cb: Mapping[str, Any], name: str, bar: Thresholds) -> str:
    """`name` against SGD-UAP on test: fooled-label entropy gained (the verdict's), label entropy gained, fooling
    rate lost, minimum per-class success, the verdict; values and n over the seeds both rows hold. ValueError
    when a seed's two runs attacked different networks."""
    check_paired_networks(sgd, cb)
    note = _shared_seeds_note(sgd, cb, "the differences and values")
    sgd, cb = _shared_seed_rows(sgd, cb)
    d_fooled, d_fr = difference(sgd, cb, VERDICT_ENTROPY), difference(sgd, cb, "fooling_rate")
    if d_fooled is None or d_fr is None:
        return "not answered (no seed in both rows reports the fooled-label entropy and the fooling rate)."
    d_ent = difference(sgd, cb, "label_entropy")
    holds = d_fooled >= bar.fooled_entropy_gain and d_fr >= -bar.fooling_rate_loss
    over_seeds = (paired(sgd, cb, VERDICT_ENTROPY), paired(sgd, cb, "fooling_rate"))
    cell = format_cell
    return (f"{name} {'raises' if d_fooled >= 0 else 'lowers'} the test fooled-label entropy by {abs(d_fooled):.3f}"
            f"{note} ({cell(sgd[VERDICT_ENTROPY])} → {cell(cb[VERDICT_ENTROPY])}; the label "
            f"entropy {'–' if d_ent is None else f'{d_ent:+.3f}'}, "
            f"{cell(sgd['label_entropy'])} → {cell(cb['label_entropy'])}) with the test fooling rate "
            f"{abs(d_fr) * 100:.1f} points {'higher' if d_fr >= 0 else 'lower'} ({cell(sgd['fooling_rate'])} → "
            f"{cell(cb['fooling_rate'])}) and the minimum per-class attack success "
            f"{cell(sgd['min_class_attack_success_rate'])} → {cell(cb['min_class_attack_success_rate'])} "
            f"(n = {sgd['n']}, {cb['n']}{_paired_balance(sgd, over_seeds, bar)}"
            f"{_bootstrap_balance(sgd, cb, over_seeds, bar)}): the claim "
            f"(fooled-label entropy ≥ {bar.fooled_entropy_gain} higher with at most "
            f"{bar.fooling_rate_loss * 100:.0f} points lost) {'holds' if holds else 'does not hold'}.")


def _margins(bar: Thresholds) -> tuple[float, float]:
    """Claim 1's margins for (fooled-label entropy, fooling rate) differences."""
    return bar.fooled_entropy_gain, -bar.fooling_rate_loss


def _margin_note(notes: Mapping[str, str], margins: Sequence[float], intervals: Sequence[Paired | None],
                 who: str) -> str:
    """', <what the 95 % intervals say of their margins>' in the words of `notes` ('' where one has no interval)."""
    said = settles(list(zip(intervals, margins)))
    return "" if said is None else ", " + notes[said].format(who=who)


def _paired_balance(sgd: Mapping[str, Any], over_seeds: tuple[Paired | None, Paired | None], bar: Thresholds) -> str:
    """'; paired per seed …' for claim 1: the two differences (fooled-label entropy, fooling rate) with their 95 %
    intervals, and what the intervals say of the margins ('' for rows that carry no runs)."""
    entropy, fooling = over_seeds
    if entropy is None or fooling is None:
        return "" if "_records" not in sgd else "; no seed in both rows, so no paired difference"
    text = (f"; paired over {counted(entropy.n, 'seed')} (95 % t-intervals): fooled-label entropy "
            f"{entropy.text()}, fooling rate {fooling.text(100, 1)} points")
    return text + _margin_note(_MARGIN_NOTES, _margins(bar), over_seeds, "these seeds")


def _predictions_by_seed(row: Mapping[str, Any]) -> dict[Any, Predictions]:
    found = {r.get("seed"): load_predictions(r) for r in row.get("_records", ())}
    return {seed: p for seed, p in found.items() if p is not None}


def _bootstrap_balance(sgd: Mapping[str, Any], cb: Mapping[str, Any],
                       over_seeds: tuple[Paired | None, Paired | None], bar: Thresholds) -> str:
    """'; over the test images of seed s …' for claim 1: the two differences on the first seed whose runs of both
    rows saved their predictions, with paired bootstrap intervals over the test images ('' where none did), and
    what they say of the margins where the seeds give no interval."""
    left, right = _predictions_by_seed(sgd), _predictions_by_seed(cb)
    common = sorted(left.keys() & right.keys(), key=str)
    if not common:
        return ""
    seed = common[0]
    entropy = paired_bootstrap(left[seed], right[seed], VERDICT_ENTROPY)
    fooling = paired_bootstrap(left[seed], right[seed], "fooling_rate")
    seeds_speak = settles(list(zip(over_seeds, _margins(bar)))) is not None
    note = "" if seeds_speak else _margin_note(_MARGIN_NOTES, _margins(bar), (entropy, fooling), "one seed's test images")
    return (f"; over the {entropy.n:,} test images of seed {seed} ({RESAMPLES:,} paired bootstrap resamples, 95 % "
            f"percentile intervals): fooled-label entropy {entropy.text()}, fooling rate {fooling.text(100, 1)} points"
            f"{note}")


def _bootstrap_defence(other: Mapping[str, Any], cb: Mapping[str, Any]) -> tuple[Any, Paired, Paired] | None:
    """For claim 2: (seed, worst case, clean) CB-UAT − the other defence with paired bootstrap intervals over the
    test images of the first seed whose runs of both rows saved their predictions under every attack (None where
    none did)."""
    left, right = ({r.get("seed"): load_defence_predictions(r) for r in row.get("_records", ())}
                   for row in (other, cb))
    common = sorted((s for s in left.keys() & right.keys() if left[s] and right[s]), key=str)
    if not common:
        return None
    seed = common[0]
    return (seed, *paired_defence_bootstrap(left[seed], right[seed]))


def claim_two_note(over_seeds: tuple[Paired | None, Paired | None],
                   over_images: tuple[Paired, Paired] | None = None) -> str:
    """', <what the intervals say of zero>' for claim 2's two differences (under attack, clean): read over the
    seeds where they give intervals, else over one seed's test images (the bootstrap); '' where neither does."""
    note = _margin_note(_ZERO_NOTES, (0.0, 0.0), over_seeds, "these seeds")
    if not note and over_images is not None:
        note = _margin_note(_ZERO_NOTES, (0.0, 0.0), over_images, "one seed's test images")
    return note


def claim_balance(label: str, rows: Sequence[Mapping[str, Any]], bar: Thresholds,
                  where: Mapping[str, Any] | None = None, cb_where: Mapping[str, Any] | None = None) -> str:
    """Claim 1 in one sentence: does CB-UAP (its row matching `cb_where`; of the rows matching `where`) clear `bar`
    over SGD-UAP?"""
    rows = [r for r in rows if matches(r, where or {})]
    cb_match = {"attack": "cb_uap", **(cb_where or {})}
    sgd, cb = _find(rows, attack="sgd_uap"), _find(rows, **cb_match)
    if len(_completed(rows, **cb_match)) > 1:
        return f"{label}: not answered (more than one CB-UAP row matches; the claim's cb_where picks one)."
    if sgd is None or cb is None:
        return f"{label}: not answered (the table lacks a completed SGD-UAP or CB-UAP row)."
    return f"{label}: {_balance_verdict(sgd, cb, 'CB-UAP', bar)}"


def claim_tuned(label: str, rows: Sequence[Mapping[str, Any]], bar: Thresholds) -> str:
    """Claim 1 for the setting chosen on validation in a tuning table (labelled by `_label`), judged on test."""
    sgd = _find(rows, attack="sgd_uap")
    chosen = _find(rows, chosen=True)
    if sgd is None or chosen is None:
        return f"{label}: not answered (the tuning table lacks a completed SGD-UAP row or a chosen row)."
    name = f"the setting chosen on validation ({chosen['_label']})"
    return f"{label}: {_balance_verdict(sgd, chosen, name, bar)}"


def claim_defence(label: str, rows: Sequence[Mapping[str, Any]], cb_where: Mapping[str, Any] | None = None) -> str:
    """Claim 2 in one sentence: does CB-UAT (its row matching `cb_where`) beat UAT and CW-UAT on worst-case
    white-box UAP accuracy at equal or better clean accuracy?"""
    where = {name: {"training": name} for name in UAT_FAMILY}
    where["cb_uat"].update(cb_where or {})
    found = {name: _find(rows, **where[name]) for name in UAT_FAMILY}
    missing = [name for name, row in found.items() if row is None]
    if missing:
        return f"{label}: not answered (no completed row for {', '.join(missing)})."
    cb = found["cb_uat"]
    parts, wins = [], True
    for other in ("uat", "cw_uat"):
        row = found[other]
        worst, clean = difference(row, cb, "worst_adv_acc"), difference(row, cb, "clean_acc")
        if worst is None or clean is None:
            return f"{label}: not answered (no seed in both the cb_uat and the {other} row)."
        wins &= worst > 0 and clean >= 0
        pair, clean_pair = paired(row, cb, "worst_adv_acc"), paired(row, cb, "clean_acc")
        within = "" if pair is None else f" (paired over {counted(pair.n, 'seed')}: {pair.text(100, 1)})"
        clean_within = "" if clean_pair is None or clean_pair.low is None else f" (paired: {clean_pair.text(100, 1)})"
        boot = _bootstrap_defence(row, cb)
        images = "" if boot is None else f" ({bootstrap_clause(boot[0], 'worst case', *boot[1:])})"
        parts.append(f"against {other} worst-case {worst * 100:+.1f} points{within} and clean {clean * 100:+.1f} "
                     f"points{clean_within}{_shared_seeds_note(row, cb)}{images}"
                     f"{claim_two_note((pair, clean_pair), None if boot is None else boot[1:])}")
    runs = ", ".join(f"{name} {found[name]['n']}" for name in UAT_FAMILY)
    return (f"{label}: CB-UAT (clean {format_cell(cb['clean_acc'])}, worst case "
            f"{format_cell(cb['worst_adv_acc'])}) stands {'; '.join(parts)} (runs: {runs}): the claim "
            f"{'holds' if wins else 'does not hold'}.")
