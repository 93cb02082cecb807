"""The strength checks (`--kind strength`): is a defence's white-box evaluation strong enough to trust?

A defence that looks robust to the crafting budget may only mask its gradients. Per defence and seed it reads, on
one network, the worst case over the universal attacks (one δ for every image; the class-wise attack is not in it)
of its checks, the records of `table=strength_fmnist` and its companions (`table/strength` names the check):

- `standard`: white-box under the standard budget, at every ε swept (the accuracy-against-ε curve, whose worst
  case is taken over the attacks that ran at every ε of it, so that its points compare like with like);
- `budget4x`: white-box under four times the crafting images with restarts, at the reference ε (that of the
  budget4x records), compared with the standard budget over the attacks both ran (like with like);
- `transfer`: perturbations crafted on the naturally trained model of the same seed (task=evaluate);
- and, where it ran, `transfer_start`: white-box under the standard budget started from those perturbations
  (attack.start), compared with the standard budget over the attacks both ran. It is the check a failed transfer
  check calls for (does crafting on the defence itself go further from there?), so a defence it has not met is
  not called unchecked for it.

Each check passes when it finds no attack much stronger than the standard white-box one (within STRENGTH_MARGIN
of accuracy, on the mean of the paired per-seed differences) and the curve falls to the floor of a universal
perturbation: one that overwrites every image sends them all to one class, so accuracy falls to that class's share
of the test split, 1/K on a class-balanced one (within FLOOR_TOLERANCE). A defence's white-box numbers stand only
where every check passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import write_text
from .bootstrap import bootstrap_clause, load_predictions, paired_defence_bootstrap
from .claims import UAT_FAMILY, claim_two_note
from .figures import pyplot, save_figure
from .formats import fmt_eps, format_cell
from .networks import check_groups
from .records import NoRecords, counted, hashable, location, metric, settings
from .rows import mean_std
from .significance import Paired, interval

CHECK_KEY = "table/strength"
STANDARD, BUDGET, TRANSFER, START = "standard", "budget4x", "transfer", "transfer_start"
CHECKS = (STANDARD, BUDGET, TRANSFER, START)
CHECK_NAMES = {STANDARD: "standard budget", BUDGET: "4x budget with restarts", TRANSFER: "transfer",
               START: "white-box from the transferred δ"}
LIKE_FOR_LIKE = (BUDGET, START)  # the white-box checks, compared with the standard budget over the attacks both ran
STRENGTH_MARGIN = 0.02  # accuracy a stronger check may take off the standard white-box worst case
FLOOR_TOLERANCE = 0.05  # how near the one-class floor the accuracy-against-ε curve must come
FIGURE = "strength_eps.png"


@dataclass
class Network:
    """The worst-case accuracies of one defence's model of one seed: {check: {ε: {attack: adv_acc}}}."""

    identity: str | None = None  # the network's experiment (collect refuses records of two networks)
    clean: float | None = None  # its clean test accuracy (every record of one network reports the same)
    num_classes: int | None = None
    acc: dict[str, dict[float, dict[str, float]]] = field(default_factory=dict)
    records: dict[tuple[str, float, str], Mapping[str, Any]] = field(default_factory=dict)  # (check, ε, attack)

    def worst(self, check: str, eps: float, among: set[str] | None = None) -> tuple[float, str] | None:
        """The lowest accuracy over the universal attacks of `check` at `eps` (those `among`, if given), and its
        attack."""
        cells = {a: acc for a, acc in self.acc.get(check, {}).get(eps, {}).items() if among is None or a in among}
        return min((acc, attack) for attack, acc in cells.items()) if cells else None

    def attacks(self, check: str, eps: float) -> set[str]:
        return set(self.acc.get(check, {}).get(eps, {}))


def _universal(record: Mapping[str, Any]) -> bool:
    """Whether the record's perturbation is one δ for every image (what the record says of it)."""
    stored = (record.get("provenance") or {}).get("perturbation") or {}
    return not (record.get("metrics") or {}).get("class_wise", stored.get("class_wise", False))


def collect(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[Any, Network]]:
    """defence -> seed -> its Network, from the completed records that name a strength check. ValueError when one
    defence and seed hold records of more than one network (a check would compare two models): of another
    experiment (identity), or of the same one trained again into other weights (networks.py)."""
    out: dict[str, dict[Any, Network]] = {}
    runs: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
    for record in records:
        run = settings(record)
        check = run.get(CHECK_KEY)
        if record.get("status") != "completed" or check not in CHECKS:
            continue
        acc = metric(record, "adv_acc")
        if acc is None or not _universal(record):
            continue
        net = out.setdefault(str(run.get("training")), {}).setdefault(record.get("seed"), Network())
        net.identity = str(((record.get("provenance") or {}).get("model") or {}).get("identity"))
        runs.setdefault((str(run.get("training")), hashable(record.get("seed"))), []).append(record)
        net.clean = net.clean if net.clean is not None else metric(record, "clean_acc")
        net.num_classes = net.num_classes or _classes(record)
        net.acc.setdefault(check, {}).setdefault(float(run["attack.eps"]), {})[str(run["attack"])] = acc
        net.records[(check, float(run["attack.eps"]), str(run["attack"]))] = record
    if not out:
        raise NoRecords(f"--kind strength: no completed records of a strength check (table/strength="
                        f"{', '.join(CHECKS)})")
    check_groups({f"training={defence} seed={seed}": group for (defence, seed), group in runs.items()},
                 "a strength check compares attacks on one model")
    check_transfer_sources(records)
    return out


def check_transfer_sources(records: Sequence[Mapping[str, Any]]) -> None:
    """ValueError when a transferred perturbation (scored, or a crafting's start) was crafted on other weights than
    those the records of its source network (the same experiment and seed) attacked: that network was trained again
    in between."""
    weights: dict[tuple[str, str], dict[str, str]] = {}
    for record in records:
        model = (record.get("provenance") or {}).get("model") or {}
        if record.get("status") == "completed" and model.get("weights_fingerprint"):
            key = (str(model.get("identity")), hashable(record.get("seed")))
            weights.setdefault(key, {}).setdefault(model["weights_fingerprint"], location(record))
    for record in records:
        stored = transferred(record)
        crafted = stored.get("crafted_on_weights")
        known = weights.get((str(stored.get("crafted_on")), hashable(record.get("seed"))), {})
        if record.get("status") == "completed" and crafted and known and crafted not in known:
            raise ValueError(f"{location(record)}: its perturbation was crafted on other weights than its source "
                             f"network's records attacked (e.g. {next(iter(known.values()))}); transfer from the "
                             "network the other checks met")


def _classes(record: Mapping[str, Any]) -> int | None:
    """The number of classes, from the record's histogram of predicted labels."""
    hist = (record.get("metrics") or {}).get("label_hist")
    return len(hist) if isinstance(hist, list) else None


def reference_eps(nets: Mapping[str, Mapping[Any, Network]]) -> float:
    """The ε of the budget4x records (one for all), else the smallest standard ε."""
    found = {eps for seeds in nets.values() for net in seeds.values() for eps in net.acc.get(BUDGET, {})}
    if len(found) > 1:
        raise ValueError(f"--kind strength: budget4x records at several eps ({sorted(found)}); check one at a time")
    if found:
        return found.pop()
    return min(eps for seeds in nets.values() for net in seeds.values() for eps in net.acc.get(STANDARD, {}))


Stat = tuple[float | None, float | None, int]  # mean, std and the number of seeds they are over


def _stat(values: Sequence[float]) -> Stat:
    return (*mean_std(values), len(values))


@dataclass(frozen=True)
class Row:
    """One defence's line: its means over seeds, the paired differences and the verdict."""

    defence: str
    n: int
    clean: Stat
    standard: Stat
    standard_attack: str
    budget: Stat
    budget_attacks: str
    budget_gap: Paired | None
    transfer: Stat
    transfer_gap: Paired | None
    start: Stat
    start_gap: Paired | None
    floor_eps: float | None  # the smallest ε whose mean worst case is within FLOOR_TOLERANCE of the floor
    largest_eps: float | None
    verdict: str
    source: bool = False  # the network the transferred perturbations were crafted on
    strongest: Stat = (None, None, 0)  # per seed the lowest of every check
    seeds: Mapping[Any, Network] | None = None


def _gap(seeds: Mapping[Any, Network], check: str, eps: float) -> Paired | None:
    """check − standard, the worst cases paired seed by seed. A white-box check is compared over the attacks both
    checks ran (like with like); transferred perturbations against the whole white-box worst case."""
    diffs = []
    for net in seeds.values():
        among = net.attacks(STANDARD, eps) & net.attacks(check, eps) if check in LIKE_FOR_LIKE else None
        base, other = net.worst(STANDARD, eps, among), net.worst(check, eps, among)
        if base is not None and other is not None:
            diffs.append(other[0] - base[0])
    return interval(diffs)


def budget_attacks(seeds: Mapping[Any, Network], eps: float) -> str:
    """The attacks the larger budget ran on every seed of a defence that ran it ('–' for none)."""
    sets = [found for net in seeds.values() if (found := net.attacks(BUDGET, eps))]
    common = set.intersection(*sets) if sets else set()
    return "/".join(sorted(common)) or "–"


def _values(seeds: Mapping[Any, Network], check: str, eps: float, among: set[str] | None = None) -> list[float]:
    return [w[0] for net in seeds.values() if (w := net.worst(check, eps, among)) is not None]


def curve_attacks(seeds: Mapping[Any, Network]) -> set[str]:
    """The attacks the standard budget ran at every ε of the curve on every seed: the curve's worst case is taken
    over these only, so that each of its points reads the same attacks (like with like)."""
    sets = [net.attacks(STANDARD, eps) for net in seeds.values() for eps in net.acc.get(STANDARD, {})]
    return set.intersection(*sets) if sets else set()


def curve(seeds: Mapping[Any, Network]) -> dict[float, list[float]]:
    """ε -> the standard worst case of each seed at that ε, over the curve's attacks."""
    among = curve_attacks(seeds)
    eps_values = sorted({eps for net in seeds.values() for eps in net.acc.get(STANDARD, {})})
    return {eps: _values(seeds, STANDARD, eps, among) for eps in eps_values}


def floor_of(seeds: Mapping[Any, Network]) -> float:
    """The accuracy a perturbation that overwrites every image leaves: one class's share, 1/K."""
    classes = {net.num_classes for net in seeds.values() if net.num_classes}
    return 1.0 / max(classes) if classes else 0.0


def transferred(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a record says of the perturbation it took from elsewhere: the one it scored (task=evaluate) or the one
    its crafting started from (attack.start); {} for neither."""
    provenance = record.get("provenance") or {}
    return provenance.get("perturbation") or provenance.get("start") or {}


def transfer_sources(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """The identities of the networks the transferred perturbations were crafted on."""
    found = set()
    for record in records:
        stored = transferred(record)
        if record.get("status") == "completed" and stored.get("crafted_on"):
            found.add(str(stored["crafted_on"]))
    return found


def strongest_by_seed(seeds: Mapping[Any, Network], eps: float) -> dict[Any, float]:
    """seed -> the lowest accuracy any check found at `eps` (the strongest attack known against that network), for
    the seeds that ran every check some seed of the defence ran (a seed short of one would read a weaker attack)."""
    checks = [c for c in CHECKS if any(net.worst(c, eps) for net in seeds.values())]
    out = {}
    for seed, net in seeds.items():
        found = [net.worst(check, eps) for check in checks]
        if found and all(w is not None for w in found):
            out[seed] = min(w[0] for w in found)
    return out


def build_row(defence: str, seeds: Mapping[Any, Network], eps: float, sources: set[str] = frozenset()) -> Row:
    worst = [net.worst(STANDARD, eps) for net in seeds.values()]
    attacks = sorted({w[1] for w in worst if w is not None})
    points = {e: mean_std(v)[0] for e, v in curve(seeds).items() if v}
    floor = floor_of(seeds)
    reached = [e for e, acc in points.items() if acc is not None and acc <= floor + FLOOR_TOLERANCE]
    gaps = {check: _gap(seeds, check, eps) for check in CHECKS[1:]}
    source = all(net.identity in sources for net in seeds.values())
    return Row(defence, len(seeds), _stat([net.clean for net in seeds.values() if net.clean is not None]),
               _stat(_values(seeds, STANDARD, eps)), "/".join(attacks) or "–",
               _stat(_values(seeds, BUDGET, eps)), budget_attacks(seeds, eps), gaps[BUDGET],
               _stat(_values(seeds, TRANSFER, eps)), gaps[TRANSFER], _stat(_values(seeds, START, eps)), gaps[START],
               min(reached) if reached else None, max(points) if points else None,
               verdict(gaps, bool(reached), len(points) > 1, source), source,
               _stat(list(strongest_by_seed(seeds, eps).values())), seeds)


def verdict(gaps: Mapping[str, Paired | None], reached: bool, has_curve: bool, source: bool = False) -> str:
    """`consistent`, or what the white-box numbers miss, or which checks are missing, from each stronger check's
    difference from the standard budget (`gaps`; `source`: the network the transferred perturbations come from,
    which has no transfer checks). The check from the transferred start is judged where it ran, never missing."""
    failed, missing = [], []
    checks = [(BUDGET, gaps.get(BUDGET))] + ([] if source else [(TRANSFER, gaps.get(TRANSFER))])
    if not source and gaps.get(START) is not None:
        checks.append((START, gaps[START]))
    for check, gap in checks:
        name = CHECK_NAMES[check]
        if gap is None:
            missing.append(name)
        elif gap.mean < -STRENGTH_MARGIN:
            failed.append(f"{name} lowers accuracy by {-gap.mean:.3f}")
    if not has_curve:
        missing.append("accuracy against eps")
    elif not reached:
        failed.append("accuracy does not fall to the one-class floor")
    if failed:
        return "white-box overstates robustness: " + "; ".join(failed)
    if len(missing) == len(checks) + 1:  # nothing to agree with yet
        return f"not checked: {', '.join(missing)}"
    return "consistent" + (f" (not checked: {', '.join(missing)})" if missing else "")


def rows(records: Sequence[Mapping[str, Any]]) -> tuple[float, list[Row], dict[str, dict[Any, Network]]]:
    """The reference ε, one Row per defence (sorted), and the networks they summarise."""
    nets = collect(records)
    eps = reference_eps(nets)
    sources = transfer_sources(records)
    return eps, [build_row(defence, nets[defence], eps, sources) for defence in sorted(nets)], nets


def _cell(value: Stat, n: int) -> str:
    """mean ± std, with "(n=k)" where it is over fewer seeds than the row's n (a check not yet run on them all)."""
    return "–" if value[0] is None else format_cell(value) + (f" (n={value[2]})" if value[2] != n else "")


def _gap_cell(gap: Paired | None) -> str:
    return "–" if gap is None else gap.text()


COLUMNS = ("defence", "n", "clean_acc", "white-box worst (standard)", "worst attack", "4x budget + restarts",
           "its attacks", "Δ 4x − standard, same attacks [95 %]", "transfer from natural",
           "Δ transfer − standard [95 %]", "white-box from the transferred δ", "Δ its − standard, same attacks [95 %]",
           "floor reached at eps", "strongest found", "verdict")


def to_markdown(eps: float, table: Sequence[Row], nets: Mapping[str, Mapping[Any, Network]]) -> str:
    """The strength table with what it compares, and the accuracy-against-ε table under it."""
    lines = [f"Worst case over the universal attacks at eps {fmt_eps(eps)} (accuracy under attack, mean ± std over n seeds); "
             f"a check fails when it lowers accuracy by more than {STRENGTH_MARGIN} or the curve never comes within "
             f"{FLOOR_TOLERANCE} of the one-class floor.", "",
             "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for row in table:
        cells = [row.defence, str(row.n), _cell(row.clean, row.n), _cell(row.standard, row.n), row.standard_attack,
                 _cell(row.budget, row.n), row.budget_attacks, _gap_cell(row.budget_gap),
                 "(their source)" if row.source else _cell(row.transfer, row.n), _gap_cell(row.transfer_gap),
                 "(their source)" if row.source else _cell(row.start, row.n), _gap_cell(row.start_gap),
                 _floor_cell(row), _cell(row.strongest, row.n), row.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *claim_two_lines(eps, table), *curve_markdown(nets)]) + "\n"


def claim_two_lines(eps: float, table: Sequence[Row]) -> list[str]:
    """The claim-2 line under the strength table (none without CB-UAT, UAT and CW-UAT)."""
    text = claim_two_text(eps, table)
    return [] if text is None else [f"Claim 2 against the strongest attack found (the lowest accuracy of its "
                                    f"checks at eps {fmt_eps(eps)}): {text}", ""]


def claim_two_text(eps: float, table: Sequence[Row]) -> str | None:
    """Claim 2 read with the strongest attack found against each model: does CB-UAT keep more accuracy than UAT
    and CW-UAT at equal or better clean accuracy? Each rival is paired with CB-UAT seed by seed over the checks and
    attacks both ran (shared_checks), with a bootstrap over the test images of the first paired seed whose runs
    saved their predictions; None without the three."""
    rows = {row.defence: row for row in table}
    if not all(name in rows for name in UAT_FAMILY):
        return None
    cb, parts, wins, pending = rows["cb_uat"], [], True, False
    for other in UAT_FAMILY[1:]:
        row = rows[other]
        shared = shared_checks(cb.seeds, row.seeds, eps)
        pairs = paired_strongest(cb.seeds, row.seeds, eps, shared)
        if not pairs:
            pending = True
            parts.append(f"against {other} – (no seed where both ran the same checks)")
            continue
        gap = interval([ours - theirs for ours, theirs in pairs.values()])
        clean = interval([cb.seeds[s].clean - row.seeds[s].clean for s in pairs
                          if cb.seeds[s].clean is not None and row.seeds[s].clean is not None])
        wins &= gap.mean > 0 and clean is not None and clean.mean >= 0
        boot = _bootstrap(cb.seeds, row.seeds, eps, shared)
        images = "" if boot is None else "; " + bootstrap_clause(boot[0], "strongest found", *boot[1:])
        parts.append(f"against {other} {gap.text(100, 1)} points over {counted(len(pairs), 'seed')} "
                     f"(clean {_clean_text(clean)} points{images}"
                     f"{claim_two_note((gap, clean), None if boot is None else boot[1:])})")
    verdict = "not answered yet" if pending else f"the claim {'holds' if wins else 'does not hold'} here"
    return (f"CB-UAT's accuracy, read over the checks both defences ran ({', '.join(_checks_run(table, eps))}), "
            f"stands {'; '.join(parts)}: {verdict}.")


def shared_checks(ours: Mapping[Any, Network], theirs: Mapping[Any, Network], eps: float
                  ) -> dict[Any, list[tuple[str, set[str]]]]:
    """seed -> each check either defence ran at `eps` (on any seed) with the attacks both of that seed's networks
    ran under it, for the seeds where both networks ran every one of those checks (like with like: a model read
    with a check or attack its rival has not met yet would look weaker)."""
    checks = _checks_of([ours, theirs], eps)
    out = {}
    for seed in sorted(ours.keys() & theirs.keys(), key=str):
        shared = [(check, ours[seed].attacks(check, eps) & theirs[seed].attacks(check, eps)) for check in checks]
        if checks and all(among for _, among in shared):
            out[seed] = shared
    return out


def _checks_of(seeds: Sequence[Mapping[Any, Network]], eps: float) -> list[str]:
    """The checks some network of these defences ran at `eps`."""
    return [c for c in CHECKS if any(net.worst(c, eps) for nets in seeds for net in nets.values())]


def paired_strongest(ours: Mapping[Any, Network], theirs: Mapping[Any, Network], eps: float,
                     shared: Mapping[Any, list[tuple[str, set[str]]]]) -> dict[Any, tuple[float, float]]:
    """seed -> the lowest accuracy of each of the two networks over the checks and attacks they share (shared_checks)."""
    return {seed: tuple(min(net.worst(check, eps, among)[0] for check, among in checks)
                        for net in (ours[seed], theirs[seed])) for seed, checks in shared.items()}


def _bootstrap(ours: Mapping[Any, Network], theirs: Mapping[Any, Network], eps: float,
               shared: Mapping[Any, list[tuple[str, set[str]]]]) -> tuple[Any, Paired, Paired] | None:
    """(seed, strongest found, clean): ours − theirs with paired bootstrap intervals over the test images of the first
    paired seed whose runs saved their predictions under every check and attack the pair reads (None where none)."""
    for seed, checks in shared.items():
        runs = [{f"{check} {attack}": load_predictions(net.records[(check, eps, attack)])
                 for check, among in checks for attack in among} for net in (ours[seed], theirs[seed])]
        if all(p is not None for run in runs for p in run.values()):
            return (seed, *paired_defence_bootstrap(runs[1], runs[0]))
    return None


def _clean_text(clean: Paired | None) -> str:
    """The clean difference in points, with its interval where the seeds give one."""
    if clean is None:
        return "–"
    return f"{clean.mean * 100:+.1f}" if clean.low is None else clean.text(100, 1)


def _checks_run(table: Sequence[Row], eps: float) -> list[str]:
    """The names of the checks some network of the UAT family ran at `eps`."""
    return [CHECK_NAMES[c] for c in _checks_of([row.seeds for row in table if row.defence in UAT_FAMILY], eps)]


def _floor_cell(row: Row) -> str:
    if row.floor_eps is not None:
        return fmt_eps(row.floor_eps)
    return "–" if row.largest_eps is None else f"not by {fmt_eps(row.largest_eps)}"


def curve_markdown(nets: Mapping[str, Mapping[Any, Network]]) -> list[str]:
    """Accuracy against ε: the standard white-box worst case of each defence (mean ± std, n)."""
    curves = {defence: curve(seeds) for defence, seeds in sorted(nets.items())}
    eps_values = sorted({eps for c in curves.values() for eps in c})
    lines = ["Accuracy against eps (standard budget, worst case over the universal attacks that ran at every eps of "
             "the defence's curve, named in its row; mean ± std (n)):", "",
             "| defence | attacks | " + " | ".join(f"eps {fmt_eps(e)}" for e in eps_values) + " |",
             "|---" * (len(eps_values) + 2) + "|"]
    for defence, points in curves.items():
        cells = [f"{format_cell((*mean_std(points[e]), len(points[e])))} ({len(points[e])})" if points.get(e) else "–"
                 for e in eps_values]
        attacks = "/".join(sorted(curve_attacks(nets[defence]))) or "–"
        lines.append(f"| {defence} | {attacks} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def to_csv(table: Sequence[Row]) -> str:
    head = ("defence,n,clean_acc_mean,standard_worst_mean,standard_worst_std,worst_attack,budget4x_worst_mean,"
            "budget4x_attacks,budget4x_gap_mean,budget4x_gap_low,budget4x_gap_high,transfer_worst_mean,transfer_gap_mean,"
            "transfer_gap_low,transfer_gap_high,transfer_start_worst_mean,transfer_start_gap_mean,transfer_start_gap_low,"
            "transfer_start_gap_high,floor_eps,verdict")
    lines = [head]
    for r in table:
        fields = [r.defence, r.n, r.clean[0], *r.standard[:2], r.standard_attack, r.budget[0], r.budget_attacks,
                  *_gap_fields(r.budget_gap), r.transfer[0], *_gap_fields(r.transfer_gap), r.start[0],
                  *_gap_fields(r.start_gap), r.floor_eps, r.verdict]
        lines.append(",".join("" if v is None else str(v).replace(",", ";") for v in fields))
    return "\n".join(lines) + "\n"


def _gap_fields(gap: Paired | None) -> tuple[Any, Any, Any]:
    return (None, None, None) if gap is None else (gap.mean, gap.low, gap.high)


def eps_axis(values: Sequence[float]) -> tuple[float, str]:
    """The x scale and label of an ε axis: in 255ths where every value is a whole number of them (fmt_eps)."""
    if values and all("/255" in fmt_eps(e) for e in values):
        return 255.0, "eps (in 255ths, L-inf)"
    return 1.0, "eps (L-inf)"


def curve_figure(eps: float, nets: Mapping[str, Mapping[Any, Network]], path: Path) -> Path:
    """Accuracy against ε per defence (mean ± std); at the reference ε the budget4x worst case as a cross, the
    transferred one as a triangle and the white-box one from the transferred start as a square; the one-class floor
    dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    scale, label = eps_axis(sorted({e for seeds in nets.values() for e in curve(seeds)} | {eps}))
    for defence, seeds in sorted(nets.items()):
        points = {e: mean_std(v) for e, v in curve(seeds).items() if v}
        xs = sorted(points)
        line = ax.errorbar([x * scale for x in xs], [points[e][0] for e in xs], yerr=[points[e][1] or 0 for e in xs],
                           marker="o", capsize=3, label=defence)
        for check, marker in ((BUDGET, "x"), (TRANSFER, "^"), (START, "s")):
            found = _values(seeds, check, eps)
            if found:
                ax.plot([eps * scale], [mean_std(found)[0]], marker, markersize=8, color=line[0].get_color(),
                        fillstyle="none")
    floor = max(floor_of(seeds) for seeds in nets.values())
    ax.axhline(floor, linestyle="--", color="grey", linewidth=1, label="every image sent to one class (1/K)")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy under the worst universal attack")
    ax.set_ylim(0, 1)
    ax.set_title(f"Accuracy against eps (at {fmt_eps(eps)}: x 4x budget with restarts, ^ transferred from natural,\n"
                 "square: white-box from the transferred δ)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_strength(records: Sequence[Mapping[str, Any]], out: Path, figures: bool = True) -> list[Path]:
    """strength.md and strength.csv (and strength_eps.png) in `out`; returns the paths, the table first."""
    eps, table, nets = rows(records)
    written = [out / "strength.md", out / "strength.csv"]
    write_text(written[0], to_markdown(eps, table, nets))
    write_text(written[1], to_csv(table))
    if figures:
        written.append(curve_figure(eps, nets, out / FIGURE))
    return written
