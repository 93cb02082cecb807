"""Table kinds: which metric columns a table of attacks, defences, an ablation or a tuning sweep shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ATTACK_METRICS = (
    "clean_acc",
    "fooling_rate",
    "attack_success_rate",
    "adv_acc",
    "label_entropy",
    "fooled_label_entropy",
    "dominant_label_ratio",
    "num_target_labels",
    "worst_class_adv_acc",
    "min_class_attack_success_rate",
    "mean_class_attack_success_rate",
    "craft_seconds",
)
TUNING_METRICS = (  # the choice reads the val_* columns only; the test columns show what it gives
    "val_fooling_rate",
    "val_label_entropy",
    "val_fooled_label_entropy",
    "val_dominant_label_ratio",
    "val_min_class_attack_success_rate",
    "fooling_rate",
    "label_entropy",
    "fooled_label_entropy",
    "min_class_attack_success_rate",
    "craft_seconds",
)
DEFENCE_METRICS = (
    "clean_acc",
    "adv_acc_*",  # one column per attack the records report, in their order
    "worst_adv_acc",
    "worst_class_adv_acc",
    "wall_seconds",
    "time_vs_natural",
)
KIND_METRICS = {"attacks": ATTACK_METRICS, "ablation": ATTACK_METRICS, "defences": DEFENCE_METRICS,
                "tuning": TUNING_METRICS}
TRANSFER = "transfer"  # the cross-model matrix of evaluated perturbations (transfer.py), not a table of rows
PARETO = "pareto"  # a study's Pareto front with its hypervolume history (pareto.py), not a table of rows
STRENGTH = "strength"  # the defences' strength checks (strength.py), not a table of rows
PROGRESS = "progress"  # where each run of a sweep stands (progress.py), not a table of rows
KINDS = ("auto", *KIND_METRICS, TRANSFER, PARETO, STRENGTH, PROGRESS)


def resolve_kind(records: Sequence[Mapping[str, Any]], kind: str = "auto") -> str:
    """`kind`, or for "auto": defences when every run trains or runs the pipeline, attacks when
    every run attacks or evaluates, "mixed" otherwise."""
    if kind != "auto":
        if kind not in KINDS:
            raise ValueError(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
        return kind
    tasks = {r.get("task") for r in records if r.get("status") == "completed"} or {r.get("task") for r in records}
    if tasks and tasks <= {"train", "pipeline"}:
        return "defences"
    if tasks and tasks <= {"attack", "evaluate"}:
        return "attacks"
    return "mixed"


def metric_columns(records: Sequence[Mapping[str, Any]], kind: str) -> list[str]:
    """The kind's metric columns that at least one run reports (a `prefix*` entry: every such metric, in the
    records' order)."""
    present: dict[str, None] = {}
    for r in records:
        present.update(dict.fromkeys((r.get("metrics") or {}).keys()))
        if r.get("wall_seconds") is not None:
            present["wall_seconds"] = None
    if "wall_seconds" in present:
        present["time_vs_natural"] = None
    wanted = KIND_METRICS[kind] if kind in KIND_METRICS else ATTACK_METRICS + DEFENCE_METRICS
    columns: list[str] = []
    for m in wanted:
        matches = [k for k in present if k.startswith(m[:-1])] if m.endswith("*") else [m] if m in present else []
        columns += [k for k in matches if k not in columns]
    return columns
