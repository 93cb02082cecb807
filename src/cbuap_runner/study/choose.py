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

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..errors import UserError
from ..io import write_text
from ..report.claims import manifest_thresholds
from ..report.pareto import Front, chosen_trial, pareto_front
from ..report.records import NoRecords, load_records
from .loop import TRIALS
from .spec import StudySpec

STUDY_POINT = Path("table") / "study_point"  # the blocks' folder under conf/


def study_front(spec: StudySpec) -> Front:
    """The front of the study's records in <dir>/<name>; one line when there are none."""
    root = Path(spec.dir) / spec.name
    try:
        return pareto_front(load_records(root), manifest_thresholds())
    except (NotADirectoryError, NoRecords, ValueError) as err:
        raise UserError(f"study {spec.name}: {err}") from None


def point_block(spec: StudySpec, front: Front, record: dict[str, Any], number: int) -> str:
    """The YAML text of the block: a header saying where it comes from, the balance settings, the job's folder."""
    done = sum(t.val is not None for t in front.trials)
    val = record["metrics"]
    subdir = f"${{attack.name}}_eps${{attack.eps}}_{spec.name}_seed${{seed}}"  # beside the table's other jobs
    body = OmegaConf.to_yaml({"attack": {"balance": record["config"]["attack"]["balance"]},
                              "hydra": {"sweep": {"subdir": subdir}}})
    return (f"# @package _global_\n"
            f"# CB-UAP at the point of study {spec.name} chosen on validation: trial {number}, of the study's "
            f"{len(front.trials)} trial runs ({done} completed),\n"
            f"# validation fooling rate {val['val_fooling_rate']:.4f}, fooled-label entropy "
            f"{val['val_fooled_label_entropy']:.4f}; the rule: report/pareto.py, chosen_trial.\n"
            f"# Written from the study's records by `python -m cbuap_runner.study {spec.name} dir={spec.dir} --choose`"
            f"\n# (rerun it, do not edit).\n"
            f"# Only attack=cb_uap reads it: `+table/study_point={spec.name}`.\n{body}")


def choose(spec: StudySpec, conf_dir: str | Path) -> Path:
    """Write the chosen point's block under conf_dir; returns its path."""
    front = study_front(spec)
    chosen = chosen_trial(front)
    if chosen is None:
        raise UserError(f"study {spec.name}: no completed trial to choose from")
    records = load_records(Path(spec.dir) / spec.name / TRIALS / f"{chosen.number:04d}")
    path = Path(conf_dir) / STUDY_POINT / f"{spec.name}.yaml"
    write_text(path, point_block(spec, front, records[0], chosen.number))
    return path
