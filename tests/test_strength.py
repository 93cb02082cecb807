"""The strength checks (`--kind strength`): worst cases over the universal attacks on one network, the paired
gaps of the stronger checks, the accuracy-against-eps floor and the verdict."""

from __future__ import annotations

import json

import pytest

from cbuap_runner.report.records import NoRecords
from cbuap_runner.report.strength import STRENGTH_MARGIN, rows
from cbuap_runner.report.tables import write_tables

K = 10  # classes: the one-class floor is 0.1


def record(training: str, seed: int, check: str, attack: str, eps: float, adv_acc: float, network: str = "",
           class_wise: bool = False) -> dict:
    """A completed strength record as the runner writes it (the fields the report reads)."""
    task = "evaluate" if check == "transfer" else "attack"
    metrics = {"adv_acc": adv_acc, "clean_acc": 0.9, "label_hist": [1 / K] * K}
    provenance = {"model": {"identity": network or f"weights:{training}{seed}"}}
    given = {"identity": f"p-{attack}-{seed}", "attack": attack, "eps": eps, "norm": "linf", "class_wise": class_wise,
             "crafted_on": f"weights:natural{seed}"}
    if task == "attack":
        metrics["class_wise"] = class_wise
        if check == "transfer_start":  # white-box crafting from the transferred perturbation (attack.start)
            provenance["start"] = given
    else:
        provenance["perturbation"] = given
    return {"status": "completed", "task": task, "dataset": "fashion_mnist", "model": "small_cnn", "attack": attack,
            "training": training, "seed": seed, "overrides": [f"+table/strength={check}", f"seed={seed}"],
            "config": {"attack": {"name": attack, "eps": eps}, "training": {"name": training}},
            "metrics": metrics, "provenance": provenance}


def defence(training: str, seeds=(0, 1), standard=0.5, budget=0.49, transfer=0.55, curve=None, **kw) -> list[dict]:
    """Records of one defence: three universal attacks and a stronger class-wise one under each check."""
    curve = curve if curve is not None else {0.4: 0.12, 0.8: 0.1}
    out = []
    for seed in seeds:
        shift = 0.01 * seed
        for attack, extra in (("sgd_uap", 0.0), ("cb_uap", 0.05), ("uap", 0.1)):
            out += [record(training, seed, "standard", attack, 0.2, standard + extra + shift, **kw),
                    record(training, seed, "budget4x", attack, 0.2, budget + extra + shift, **kw),
                    record(training, seed, "transfer", attack, 0.2, transfer + extra + shift, **kw)]
            out += [record(training, seed, "standard", attack, eps, acc + extra, **kw) for eps, acc in curve.items()]
        out.append(record(training, seed, "standard", "cw_uap", 0.2, 0.0, class_wise=True, **kw))
    return out


def by_defence(records: list[dict]) -> dict:
    eps, table, _ = rows(records)
    assert eps == 0.2
    return {row.defence: row for row in table}


def test_the_worst_case_is_over_the_universal_attacks_and_the_checks_agree():
    row = by_defence(defence("uat"))["uat"]
    assert row.standard[0] == pytest.approx(0.505) and row.standard_attack == "sgd_uap"  # cw_uap's 0.0 left out
    assert row.budget_gap.mean == pytest.approx(-0.01) and row.budget_gap.n == 2
    assert row.transfer_gap.mean == pytest.approx(0.05)
    assert row.floor_eps == 0.4 and row.verdict == "consistent"


def test_a_stronger_budget_or_transfer_or_a_high_curve_overturns_the_white_box_numbers():
    got = by_defence(defence("uat", budget=0.4) + defence("cw_uat", transfer=0.3)
                     + defence("fast_uat", curve={0.4: 0.5, 0.8: 0.3}))
    assert got["uat"].verdict == "white-box overstates robustness: 4x budget with restarts lowers accuracy by 0.100"
    assert got["cw_uat"].verdict.endswith("transfer lowers accuracy by 0.200")
    assert got["fast_uat"].floor_eps is None and got["fast_uat"].largest_eps == 0.8
    assert got["fast_uat"].verdict.endswith("accuracy does not fall to the one-class floor")
    assert STRENGTH_MARGIN == 0.02  # the margins the sentences above are judged by


def test_a_missing_check_is_named_not_passed_and_the_source_of_the_transfers_has_none():
    records = [r for r in defence("uat") if "+table/strength=transfer" not in r["overrides"]]
    assert by_defence(records)["uat"].verdict == "consistent (not checked: transfer)"
    natural = [r for r in defence("natural") if "+table/strength=transfer" not in r["overrides"]]
    got = by_defence(natural + defence("uat"))
    assert got["natural"].source and got["natural"].verdict == "consistent" and not got["uat"].source
    records = [r for r in defence("uat") if "+table/strength=standard" not in r["overrides"] or r["config"]["attack"]["eps"] == 0.2]
    assert by_defence(records)["uat"].verdict == "consistent (not checked: accuracy against eps)"


def test_a_check_not_yet_run_on_every_seed_says_over_how_many_it_is():
    from cbuap_runner.report.strength import claim_two_text, to_markdown

    records = [r for r in defence("uat") + defence("cb_uat", standard=0.6) + defence("cw_uat")
               if r["seed"] == 0 or "+table/strength=budget4x" not in r["overrides"]]  # seed 1: no 4x budget yet
    eps, table, nets = rows(records)
    uat = {row.defence: row for row in table}["uat"]
    assert uat.n == 2 and uat.budget[2] == 1 and uat.strongest[2] == 1  # seed 1's strongest would read fewer checks
    line = next(line for line in to_markdown(eps, table, nets).splitlines() if line.startswith("| uat |"))
    assert "| 0.490 (n=1) |" in line and line.count("(n=1)") == 2
    assert "against uat +0.0 (one seed: no interval) points over 1 seed" in claim_two_text(eps, table)


def test_records_of_two_networks_for_one_defence_and_seed_are_refused():
    records = defence("uat", seeds=(0,)) + [record("uat", 0, "budget4x", "sgd_uap", 0.2, 0.1, network="weights:other")]
    with pytest.raises(ValueError, match="training=uat seed=0: .* used different network"):
        rows(records)
    with pytest.raises(NoRecords):
        rows([{**r, "overrides": []} for r in records])


def test_records_of_one_defence_and_seed_trained_again_into_other_weights_are_refused():
    def hashed(records: list[dict], weights: str) -> list[dict]:
        for r in records:
            r["provenance"]["model"].update(digest="uat-seed0-key", weights_fingerprint=weights)
        return records

    same = hashed(defence("uat", seeds=(0,)), "w")
    assert by_defence(same)["uat"].verdict == "consistent"
    again = hashed([record("uat", 0, "budget4x", "sgd_uap", 0.2, 0.1)], "v")  # same experiment, same seed
    with pytest.raises(ValueError, match="training=uat seed=0: .* used different weights"):
        rows(same + again)


def test_a_perturbation_crafted_on_a_source_network_trained_again_is_refused():
    records = defence("natural", seeds=(0,)) + defence("uat", seeds=(0,))
    for r in records:
        if r["training"] == "natural":
            r["provenance"]["model"]["weights_fingerprint"] = "n"
    transferred = [r for r in records if "+table/strength=transfer" in r["overrides"] and r["training"] == "uat"]
    for r in transferred:
        r["provenance"]["perturbation"]["crafted_on_weights"] = "n"
    assert by_defence(records)["uat"].verdict == "consistent"
    transferred[0]["provenance"]["perturbation"]["crafted_on_weights"] = "m"
    with pytest.raises(ValueError, match="crafted on other weights than its source network's records attacked"):
        rows(records)
    start = started("uat", {"sgd_uap": 0.4}, seeds=(0,))  # a crafting's start is held to the same rule
    transferred[0]["provenance"]["perturbation"]["crafted_on_weights"] = "n"
    start[0]["provenance"]["start"]["crafted_on_weights"] = "m"
    with pytest.raises(ValueError, match="crafted on other weights than its source network's records attacked"):
        rows(records + start)


def started(training: str, accs: dict[str, float], seeds=(0, 1)) -> list[dict]:
    """White-box records of `training` crafted from the transferred perturbations: attack -> adv_acc."""
    return [record(training, seed, "transfer_start", attack, 0.2, acc) for seed in seeds for attack, acc in accs.items()]


def test_white_box_crafting_from_the_transferred_start_is_judged_where_it_ran_over_the_attacks_both_ran():
    from cbuap_runner.report.strength import claim_two_text, to_markdown

    # uat: standard sgd_uap 0.50 / cb_uap 0.55 / uap 0.60 (seed 0); from the transferred start only cb_uap, 0.30
    got = by_defence(defence("uat") + started("uat", {"cb_uap": 0.3}))["uat"]
    assert got.start_gap.mean == pytest.approx(-0.255)  # against cb_uap's 0.55/0.56, not the worst case's 0.50/0.51
    assert got.verdict == "white-box overstates robustness: white-box from the transferred δ lowers accuracy by 0.255"
    assert got.strongest[0] == pytest.approx(0.3)  # the strongest found reads it
    # not run: not called unchecked for it (the three checks stand without it)
    assert by_defence(defence("uat"))["uat"].verdict == "consistent"
    records = (defence("natural") + defence("uat") + defence("cb_uat") + defence("cw_uat")
               + started("uat", {"sgd_uap": 0.3}) + started("cb_uat", {"sgd_uap": 0.45}) + started("cw_uat", {"sgd_uap": 0.5}))
    eps, table, nets = rows(records)
    text = to_markdown(eps, table, nets)
    assert "| white-box from the transferred δ | Δ its − standard, same attacks [95 %] |" in text
    assert "| natural | 2 |" in text and text.split("| natural | 2 |")[1].count("(their source)") == 2
    # claim 2 reads it where both defences ran it: CB-UAT 0.45 against UAT 0.30 over its shared checks
    line = claim_two_text(eps, table)
    assert "white-box from the transferred δ)" in line and "against uat +15.0 [+15.0, +15.0] points" in line


def test_make_tables_writes_the_table_the_curve_and_the_figure(tmp_path):
    for i, rec in enumerate(defence("natural") + defence("uat", budget=0.4)):
        (tmp_path / "records" / str(i)).mkdir(parents=True)
        (tmp_path / "records" / str(i) / "run_summary.json").write_text(json.dumps(rec))
    written = write_tables(tmp_path / "records", tmp_path / "out", kind="strength")
    assert [p.name for p in written] == ["strength.md", "strength.csv", "strength_eps.png"]
    text = written[0].read_text()
    assert "| uat | 2 |" in text and "-0.100 [-0.100, -0.100]" in text and "eps 0.8" in text
    assert "white-box overstates robustness" in written[1].read_text().splitlines()[2]


def test_the_larger_budget_is_compared_over_the_attacks_it_ran():
    records = [r for r in defence("cw_uat", standard=0.5, budget=0.49)
               if not ("+table/strength=budget4x" in r["overrides"] and r["attack"] == "uap")]
    for r in records:  # DeepFool UAP is the worst white-box attack under the standard budget
        if r["attack"] == "uap" and "+table/strength=standard" in r["overrides"]:
            r["metrics"]["adv_acc"] = 0.2
    row = by_defence(records)["cw_uat"]
    assert row.standard_attack == "uap" and row.budget_attacks == "cb_uap/sgd_uap"
    assert row.budget_gap.mean == pytest.approx(-0.01)  # sgd_uap 0.49 against sgd_uap 0.50, not against uap's 0.2
    assert row.transfer_gap.mean == pytest.approx(0.555 - 0.2)  # transfer against the whole white-box worst case


def test_the_curve_reads_only_the_attacks_that_ran_at_every_eps(tmp_path):
    from cbuap_runner.report.strength import curve_markdown

    records = [r for r in defence("cw_uat") if not (r["attack"] == "uap" and r["config"]["attack"]["eps"] != 0.2)]
    for r in records:  # DeepFool UAP ran at the reference eps only, and is the worst white-box attack there
        if r["attack"] == "uap" and "+table/strength=standard" in r["overrides"]:
            r["metrics"]["adv_acc"] = 0.2
    eps, table, nets = rows(records)
    row = {r.defence: r for r in table}["cw_uat"]
    assert row.standard_attack == "uap" and row.standard[0] == pytest.approx(0.2)  # the white-box column: every attack
    curve = "\n".join(curve_markdown(nets))
    assert "| cw_uat | cb_uap/sgd_uap | 0.505 ± 0.007 (2) | 0.120 ± 0.000 (2) | 0.100 ± 0.000 (2) |" in curve


def test_claim_two_is_read_with_the_strongest_attack_found():
    from cbuap_runner.report.strength import claim_two_lines

    records = defence("cb_uat", standard=0.6, budget=0.45) + defence("uat", standard=0.55) + defence("cw_uat", budget=0.44)
    eps, table, _ = rows(records)
    line = claim_two_lines(eps, table)[0]
    # the strongest found is each model's 4x budget: CB-UAT 0.45 (0.46 on seed 1), UAT 0.49, CW-UAT 0.44
    assert ("against uat -4.0 [-4.0, -4.0] points over 2 seeds (clean +0.0 [+0.0, +0.0] points, an interval lies wholly "
            "below zero)") in line
    assert "against cw_uat +1.0 [+1.0, +1.0] points over 2 seeds (clean +0.0 [+0.0, +0.0] points, both intervals clear zero)" in line
    assert line.endswith("the claim does not hold here.")
    assert "read over the checks both defences ran (standard budget, 4x budget with restarts, transfer)" in line
    assert claim_two_lines(eps, [r for r in table if r.defence != "uat"]) == []


def test_claim_two_compares_clean_accuracy_over_the_seeds_both_defences_hold():
    from cbuap_runner.report.strength import claim_two_text

    def with_clean(records: list[dict], clean: dict[int, float]) -> list[dict]:
        for r in records:
            r["metrics"]["clean_acc"] = clean[r["seed"]]
        return records

    cb = with_clean(defence("cb_uat", standard=0.6, budget=0.58, transfer=0.65), {0: 0.88, 1: 0.88})
    uat = with_clean(defence("uat", seeds=(0, 1, 2)), {0: 0.9, 1: 0.9, 2: 0.5})  # seed 2: one cb_uat lacks
    cw = with_clean(defence("cw_uat", seeds=(0, 1, 2)), {0: 0.85, 1: 0.85, 2: 0.85})
    eps, table, _ = rows(cb + uat + cw)
    text = claim_two_text(eps, table)
    assert "against uat +9.0 [+9.0, +9.0] points over 2 seeds (clean -2.0 [-2.0, -2.0] points" in text  # not +11.3 (3 seeds)
    assert text.endswith("the claim does not hold here.")


def test_claim_two_reads_cb_uat_and_a_rival_over_the_checks_and_attacks_both_ran():
    from cbuap_runner.report.strength import claim_two_text

    rivals = defence("uat", standard=0.55) + defence("cw_uat", standard=0.55)
    ahead = defence("cb_uat", standard=0.6, budget=0.4)  # its 4x budget has run; the rivals' has not
    behind = [r for r in rivals if "+table/strength=budget4x" not in r["overrides"]]
    text = claim_two_text(*rows(ahead + behind)[:2])
    assert "against uat – (no seed where both ran the same checks)" in text and text.endswith("not answered yet.")
    lone = [r for r in defence("cb_uat", standard=0.6) if not (r["attack"] == "uap" and r["overrides"][0].endswith("standard"))]
    lone.append(record("cb_uat", 0, "standard", "uap", 0.2, 0.1))  # DeepFool UAP, which no rival met yet
    rivals = [r for r in rivals if not (r["attack"] == "uap" and r["overrides"][0].endswith("standard") and r["seed"] == 0)]
    text = claim_two_text(*rows(lone + rivals)[:2])
    assert "against uat +0.0 [+0.0, +0.0] points over 2 seeds" in text  # 4x budgets: 0.49 against 0.49, not 0.1


def with_predictions(records: list[dict], folder, images: int = 200) -> list[dict]:
    """The records with the per-image predictions their runs saved: each image's adversarial label right for the
    first adv_acc share of the test images, every clean prediction right."""
    import numpy as np

    label = np.arange(images) % K
    for i, r in enumerate(records):
        adv = label.copy()
        adv[round(r["metrics"]["adv_acc"] * images):] += 1
        r["metrics"]["adv_acc"] = round(r["metrics"]["adv_acc"] * images) / images
        (folder / str(i)).mkdir()
        np.savez(folder / str(i) / "predictions.npz", label=label, clean=label, adv=adv % K)
        r.update(_path=str(folder / str(i)))
        r["metrics"]["predictions_file"] = "predictions.npz"
    return records


def test_claim_two_read_with_the_strongest_attack_adds_a_bootstrap_over_the_test_images(tmp_path):
    from cbuap_runner.report.strength import claim_two_text

    records = (defence("cb_uat", seeds=(0,), standard=0.6, budget=0.45) + defence("uat", seeds=(0,), standard=0.55)
               + defence("cw_uat", seeds=(0,), budget=0.44))
    assert "bootstrap" not in claim_two_text(*rows(records)[:2])  # no predictions saved
    text = claim_two_text(*rows(with_predictions(records, tmp_path))[:2])
    # CB-UAT's strongest found 0.45 against UAT's 0.49 on the same 200 images: the difference of the 4x budgets
    assert ("against uat -4.0 (one seed: no interval) points over 1 seed (clean +0.0 points; over the 200 test "
            "images of seed 0, 2,000 paired bootstrap resamples, 95 % percentile intervals: strongest found -4.0 [") in text
    low, high = (float(v) for v in text.split("strongest found -4.0 [")[1].split("]")[0].split(", "))
    assert low < -4.0 < high < 0
    # one seed gives no t-interval: what the intervals say of zero is read over its test images
    assert "clean +0.0 [+0.0, +0.0] points, an interval lies wholly below zero)" in text


def test_a_defence_with_no_stronger_check_yet_is_not_called_consistent():
    records = [r for r in defence("uat") if "+table/strength=standard" in r["overrides"] and r["config"]["attack"]["eps"] == 0.2]
    assert by_defence(records)["uat"].verdict == "not checked: 4x budget with restarts, transfer, accuracy against eps"


def test_budgets_in_255ths_read_as_255ths_in_the_table_and_its_curve():
    from cbuap_runner.report.formats import fmt_eps
    from cbuap_runner.report.strength import to_markdown

    assert [fmt_eps(e) for e in (8 / 255, 48 / 255, 0.2, 0.05, 1.0)] == ["8/255", "48/255", "0.2", "0.05", "1"]
    records = defence("uat")
    for r in records:  # the checks at 0.2 moved to 8/255; the curve's 0.4 and 0.8 kept
        if r["config"]["attack"]["eps"] == 0.2:
            r["config"]["attack"]["eps"] = 8 / 255
    text = to_markdown(*rows(records))
    assert "at eps 8/255 (accuracy" in text and "| eps 8/255 | eps 0.4 | eps 0.8 |" in text
    from cbuap_runner.report.strength import eps_axis

    assert eps_axis([4 / 255, 8 / 255, 48 / 255]) == (255.0, "eps (in 255ths, L-inf)")
    assert eps_axis([8 / 255, 0.4]) == (1.0, "eps (L-inf)")  # a mixed axis keeps the plain numbers
