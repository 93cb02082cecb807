"""A study's point chosen on validation, as a table building block: `python -m cbuap_runner.study SPEC --choose`
writes `conf/table/study_point/<name>.yaml`, which a claim table adds to its CB-UAP jobs as
`+table/study_point=<name>`.

The choice reads the study's run records only (report/pareto.py, chosen_trial: the tuning rule on the validation
split; the margin is the committed manifest's claims.tuning_fooling_margin). The block holds the chosen trial's
whole `attack.balance`, as its record resolved it, not just the keys the study searched: a later change of
CB-UAP's defaults then cannot shift the point. Its header names the study, the trial and its validation metrics;
the record of each run that uses it names the block (its overrides) and holds the values (its config).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..errors import UserError
from ..io import write_text
from ..report.claims import Thresholds, manifest_thresholds
from ..report.pareto import Front, Trial, chosen_trial, is_stable, pareto_front, stability_text
from ..report.records import SUMMARY, NoRecords, load_records
from .spec import StudySpec

STUDY_POINT = Path("table") / "study_point"  # the blocks' folder under conf/


def study_front(spec: StudySpec, bar: Thresholds | None = None) -> Front:
    """The front of the study's records in <dir>/<name> under `bar` (default: the committed manifest's claims); one
    line when there are none."""
    root = Path(spec.dir) / spec.name
    try:
        return pareto_front(load_records(root), bar or manifest_thresholds())
    except (NotADirectoryError, NoRecords, ValueError) as err:
        raise UserError(f"study {spec.name}: {err}") from None


def point_block(spec: StudySpec, front: Front, chosen: Trial, balance: dict[str, Any]) -> str:
    """The YAML text of the block: a header saying where it comes from, the chosen trial's balance settings, the
    job's folder."""
    done = sum(t.val is not None for t in front.trials)
    subdir = f"${{attack.name}}_eps${{attack.eps}}_{spec.name}_seed${{seed}}"  # beside the table's other jobs
    body = OmegaConf.to_yaml({"attack": {"balance": balance}, "hydra": {"sweep": {"subdir": subdir}}})
    return (f"# @package _global_\n"
            f"# CB-UAP at the point of study {spec.name} chosen on validation: trial {chosen.number}, of the study's "
            f"{len(front.trials)} trial runs ({done} completed),\n"
            f"# validation fooling rate {chosen.val[0]:.4f}, fooled-label entropy {chosen.val[1]:.4f}; the rule: "
            f"report/pareto.py, chosen_trial.\n"
            f"{_comment(stability_text(front))}\n"
            f"# Written from the study's records by `python -m cbuap_runner.study {spec.name} dir={spec.dir} --choose`"
            f"\n# (rerun it, do not edit).\n"
            f"# Only attack=cb_uap reads it: `+table/study_point={spec.name}`. Its job folder names the attack, eps,\n"
            f"# study and seed: a table that sweeps more than these with it sets hydra.sweep.subdir after it.\n{body}")


def _comment(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 116, initial_indent="# ", subsequent_indent="# "))


def chosen_balance(spec: StudySpec, chosen: Trial) -> dict[str, Any]:
    """The chosen trial's whole attack.balance, as its record resolved it; one line naming the record without it."""
    source = Path(spec.dir) / spec.name / chosen.where / SUMMARY
    try:
        return json.loads(source.read_text())["config"]["attack"]["balance"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{source}: the chosen trial's record holds no config.attack.balance ({err})") from None


def choose(spec: StudySpec, conf_dir: str | Path, force: bool = False) -> Path:
    """Write the chosen point's block under conf_dir; returns its path. Refused while the front still moves by the
    manifest's stopping rule unless `force` (the block's header then says so)."""
    front = study_front(spec)
    chosen = chosen_trial(front)
    if chosen is None:
        raise UserError(f"study {spec.name}: no completed trial to choose from")
    if not force and not is_stable(front):
        raise UserError(f"study {spec.name}: {stability_text(front)} Continue the study, or add --force to write "
                        f"the point it holds now")
    path = Path(conf_dir) / STUDY_POINT / f"{spec.name}.yaml"
    write_text(path, point_block(spec, front, chosen, chosen_balance(spec, chosen)))
    return path
