"""The study: a journal file that holds it, a relaunch that continues it, failed trials, the reference run.

Storage: Optuna's JournalStorage on one append-only file, `<dir>/<name>/journal.log`. A file needs no database
server (nor sqlalchemy); every ask and tell is one appended line, so a process killed mid-trial leaves the journal
as it was after its last complete operation, and a relaunch replays it and continues the same study.

A relaunch with the same name: completed and failed trials are kept, never rerun; a trial the journal still shows
running (its process was killed) is told its values where its run had completed (only the tell was lost), else
marked failed and not retried, since its parameters may be what stopped the process, and its run directory stays
as the killed run left it; then trials are asked until the study holds `trials` finished ones or, with
`until_stable`, until its front meets the stopping rule that `--kind pareto` reports (the committed manifest's
claims.front_stable_gain and claims.front_min_runs), whichever comes first. Each trial's run directory is
`trials/<trial number>` (unique within the study), and a directory that already exists is refused, never written
into. NSGA-II's seed is offset by the trials already finished, so a relaunch does not draw its predecessor's random
first generation again. One process runs a study at a time (a lock file). SIGTERM to the study's process alone
(`kill PID`; not to its process group, whose trial process it would end too) lets the running trial finish and be
told, then stops the study, so that it can be stopped between trials and continued later with nothing marked
failed; a second SIGTERM stops it at once.

A run that fails, or whose record lacks a finite objective, is told to the study as failed and the study goes on.
A trial whose parameters equal a completed trial's (NSGA-II's offspring can repeat a parent) is not run again: the
same setting, seed and code give the same record, so the study is told the earlier values (user attribute
`same_as`) and the trial has no run directory; the report, which reads run records, counts the runs.

Every run of a study must attack one network (report/networks.py says how records are compared): at the start and
after each trial the study reads its records and stops with one line when they name two, so a relaunch whose model
cache holds a network trained anew costs one trial, not the runs until the stopping rule is first read.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..report.claims import DEFAULT_MANIFEST, Thresholds, manifest_thresholds
from ..report.frontier import front_indices, hypervolume
from ..report.pareto import check_one_network, is_stable
from ..report.records import NoRecords, load_records
from . import trial as trial_run
from .choose import study_front
from .space import as_overrides, parse_space, suggest
from .spec import StudySpec

JOURNAL, LOCK, TRIALS, REFERENCE = "journal.log", "study.lock", "trials", "reference"


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("the study needs optuna: pip install 'cbuap-runner[study]'") from None
    return optuna


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the study's lock file; one line when another process holds it."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{path.parent}: the study is running in another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def stop_requested() -> Iterator[Callable[[], bool]]:
    """While held, a first SIGTERM only asks the study to stop after the running trial, a second one stops it as
    the signal would have; yields whether it was asked."""
    asked: list[int] = []

    def ask(signum: int, _frame: Any) -> None:
        if asked:  # asked twice: do what SIGTERM did before
            signal.signal(signum, previous)
            os.kill(os.getpid(), signum)
        asked.append(signum)

    previous = signal.signal(signal.SIGTERM, ask)
    try:
        yield lambda: bool(asked)
    finally:
        signal.signal(signal.SIGTERM, previous)


def open_study(spec: StudySpec, root: Path) -> Any:
    """The study in `root/journal.log` (created, or loaded to continue), with abandoned trials marked failed."""
    optuna = require_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(root / JOURNAL)))
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=["maximize", "maximize"],
                                load_if_exists=True)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        settle_abandoned(study, frozen.number, root / TRIALS / f"{frozen.number:04d}")
    study.sampler = optuna.samplers.NSGAIISampler(population_size=spec.population,
                                                  seed=spec.seed + len(finished(study)))
    return study


def settle_abandoned(study: Any, number: int, run_dir: Path) -> None:
    """A trial an earlier process left running: told its values where its run completed before the process
    stopped (only the tell was lost), else marked failed and not retried."""
    from optuna.trial import TrialState

    outcome = trial_run.read_outcome(run_dir)
    if outcome.values is not None:
        study.tell(number, list(outcome.values))
        print(f"trial {number}: its run completed before an earlier process stopped; told its values", flush=True)
        return
    study.tell(number, state=TrialState.FAIL)
    print(f"trial {number}: left running by an earlier process; marked failed, not retried", flush=True)


def finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


def ensure_reference(spec: StudySpec, root: Path, runner: Callable = trial_run.run) -> None:
    """SGD-UAP's run on the same model and budget (run once; it also trains the cached model the trials use)."""
    run_dir = root / REFERENCE
    outcome = trial_run.read_outcome(run_dir)
    if outcome.values is None:
        outcome = runner([*spec.base, *spec.reference], run_dir)
    if outcome.values is None:
        raise UserError(f"{run_dir}: the reference run failed: {outcome.error}")
    print(f"reference: validation fooling rate {outcome.values[0]:.4f}, fooled-label entropy {outcome.values[1]:.4f}",
          flush=True)


def run_one(study: Any, spec: StudySpec, root: Path, params: list, runner: Callable = trial_run.run) -> None:
    """Ask a trial, run it, tell its objectives (or that it failed)."""
    from optuna.trial import TrialState

    asked = study.ask()
    run_dir = root / TRIALS / f"{asked.number:04d}"
    if run_dir.exists():
        study.tell(asked, state=TrialState.FAIL)
        raise UserError(f"{run_dir}: exists, but the journal has no such trial; refusing to write over it (was "
                        f"{JOURNAL} replaced?)")
    values = suggest(asked, params)
    overrides = as_overrides(values)
    earlier = _same_setting(study, asked, params, values)
    if earlier is not None:  # the same setting, seed and code give the same record: tell its values, run nothing
        asked.set_user_attr("same_as", earlier.number)
        study.tell(asked, list(earlier.values))
        print(f"trial {asked.number}: the setting of trial {earlier.number}, not run again", flush=True)
        return
    outcome = runner([*spec.base, *spec.trial, *overrides], run_dir)
    if outcome.values is None:
        asked.set_user_attr("error", outcome.error)
        study.tell(asked, state=TrialState.FAIL)
        print(f"trial {asked.number}: failed ({outcome.error})", flush=True)
        return
    study.tell(asked, list(outcome.values))
    print(f"trial {asked.number}: validation fooling rate {outcome.values[0]:.4f}, fooled-label entropy "
          f"{outcome.values[1]:.4f} ({_front_text(study)})", flush=True)


def _same_setting(study: Any, asked: Any, params: list, values: dict[str, Any]) -> Any:
    """The earliest completed trial that applies exactly `values` (NSGA-II's offspring can repeat a parent; a value
    drawn for a key that is switched off is not applied, so it does not make a new setting), or None."""
    from optuna.trial import TrialState

    for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if done.number == asked.number or done.params.keys() != asked.params.keys():  # one of another space
            continue
        try:
            applied = suggest(done, params)
        except ValueError:  # drawn from a space whose choices have changed since: not this setting
            continue
        if applied == values:
            return done
    return None


def _front_text(study: Any) -> str:
    from optuna.trial import TrialState

    # distinct points: a repeated setting is told its original's values
    points = list(dict.fromkeys(tuple(t.values) for t in study.get_trials(deepcopy=False,
                                                                          states=(TrialState.COMPLETE,))))
    return f"front of {len(front_indices(points))}, hypervolume {hypervolume(points):.4f}"


def stopping_rule(spec: StudySpec) -> Thresholds | None:
    """With `until_stable`, the committed manifest's claims (its stopping rule), read once before any run so that a
    missing rule stops the study before it spends time and an edit of the manifest cannot move the rule mid-study;
    None without `until_stable`."""
    if not spec.until_stable:
        return None
    try:
        bar = manifest_thresholds()
    except ValueError as err:
        raise UserError(f"until_stable: {err}") from None
    if not bar.has_stopping_rule:
        raise UserError(f"until_stable: {DEFAULT_MANIFEST} declares no stopping rule (claims.front_stable_gain, "
                        f"claims.front_min_runs); give it one or run with until_stable=false")
    return bar


def check_network(root: Path) -> None:
    """UserError when the study's runs so far attacked more than one network."""
    try:
        check_one_network(load_records(root))
    except NoRecords:
        return
    except ValueError as err:
        raise UserError(f"study at {root}: {err}; a study of another network needs a dir of its own") from None


def front_is_stable(spec: StudySpec, root: Path, rule: Thresholds | None) -> bool:
    """Whether the study's run records meet the stopping rule (the one `--kind pareto` reports: report/pareto.py,
    is_stable); never without a rule. The front is read only once there are enough runs to meet it."""
    if rule is None or sum(1 for _ in (root / TRIALS).iterdir()) < rule.front_min_runs:
        return False
    return is_stable(study_front(spec, rule))


def run_study(spec: StudySpec, runner: Callable = trial_run.run) -> Any:
    """Run (or continue) the study until it holds `spec.trials` finished trials (with `until_stable`, or until its
    front is stable); returns it."""
    params = parse_space(spec.space)
    rule = stopping_rule(spec)
    root = Path(spec.dir).resolve() / spec.name
    (root / TRIALS).mkdir(parents=True, exist_ok=True)
    with exclusive(root / LOCK), stop_requested() as stopping:
        study = open_study(spec, root)
        ensure_reference(spec, root, runner)
        check_network(root)
        stable = front_is_stable(spec, root, rule)
        while len(finished(study)) < spec.trials and not stopping() and not stable:
            run_one(study, spec, root, params, runner)
            check_network(root)
            stable = front_is_stable(spec, root, rule)
        if stopping():
            print("stopped on SIGTERM after the running trial; relaunch the same command to continue", flush=True)
        if stable:
            print("the front is stable by the manifest's stopping rule (until_stable): no more trials", flush=True)
    done = finished(study)
    failed = sum(t.state.name == "FAIL" for t in done)
    print(f"study {spec.name}: {len(done)} trials ({len(done) - failed} completed, {failed} failed) in {root}\n"
          f"  python scripts/make_tables.py {root} --kind pareto", flush=True)
    return study
