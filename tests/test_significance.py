"""Paired per-seed differences and their 95 % intervals, and the claim sentences that state them."""

from __future__ import annotations

import pytest

from cbuap_runner.report.claims import Thresholds, claim_balance
from cbuap_runner.report.significance import interval, paired, t975

BAR = Thresholds(fooled_entropy_gain=0.15, fooling_rate_loss=0.02, tuning_fooling_margin=0.02, front_stable_gain=0.01,
                 front_min_runs=100)


def test_t_quantiles():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert t975(40) == pytest.approx(2.021, abs=1e-3) and t975(120) == pytest.approx(1.980, abs=1e-3)
    with pytest.raises(ValueError):
        t975(0)


def test_interval_of_known_differences():
    got = interval([0.1, 0.2, 0.3])  # mean 0.2, sd 0.1, t(2) = 4.303
    assert got.mean == pytest.approx(0.2) and got.n == 3
    assert (got.low, got.high) == (pytest.approx(0.2 - 4.303 * 0.1 / 3 ** 0.5), pytest.approx(0.2 + 4.303 * 0.1 / 3 ** 0.5))
    one = interval([0.5])
    assert (one.low, one.high, one.text()) == (None, None, "+0.500 (one seed: no interval)")
    assert interval([]) is None


def runs(metric: str, values: dict[int, float], **extra) -> list[dict]:
    return [{"seed": s, "metrics": {metric: v, **{k: e[s] for k, e in extra.items()}}} for s, v in values.items()]


def test_paired_uses_only_the_seeds_both_rows_hold():
    a = {"_records": runs("fooling_rate", {0: 0.5, 1: 0.6, 2: 0.7})}
    b = {"_records": runs("fooling_rate", {1: 0.7, 2: 0.9, 3: 0.1})}
    got = paired(a, b, "fooling_rate")
    assert got.n == 2 and got.mean == pytest.approx(0.15)
    assert paired(a, {"_records": runs("fooling_rate", {7: 0.1})}, "fooling_rate") is None


def row(attack: str, entropy: dict[int, float], fooling: dict[int, float]) -> dict:
    recs = runs("fooled_label_entropy", entropy, fooling_rate=fooling, label_entropy={s: 0.5 for s in entropy},
                min_class_attack_success_rate={s: 0.0 for s in entropy})
    mean = lambda d: (sum(d.values()) / len(d), 0.0, len(d))  # noqa: E731
    return {"attack": attack, "status": "completed", "n": len(entropy), "_records": recs,
            "fooled_label_entropy": mean(entropy), "fooling_rate": mean(fooling), "label_entropy": (0.5, 0.0, 3),
            "min_class_attack_success_rate": (0.0, 0.0, 3)}


def test_claim_one_states_what_the_intervals_say_of_the_margins():
    sgd = row("sgd_uap", {0: 0.10, 1: 0.10, 2: 0.10}, {0: 0.90, 1: 0.90, 2: 0.90})
    clear = row("cb_uap", {0: 0.40, 1: 0.41, 2: 0.42}, {0: 0.90, 1: 0.905, 2: 0.91})
    short = row("cb_uap", {0: 0.11, 1: 0.12, 2: 0.13}, {0: 0.90, 1: 0.90, 2: 0.90})
    unsure = row("cb_uap", {0: 0.0, 1: 0.5, 2: 0.4}, {0: 0.90, 1: 0.90, 2: 0.90})
    said = {name: claim_balance("x", [sgd, r], BAR) for name, r in (("clear", clear), ("short", short),
                                                                      ("unsure", unsure))}
    assert "paired over 3 seeds (95 % t-intervals): fooled-label entropy +0.310 [" in said["clear"]
    assert "both intervals clear their margins): the claim" in said["clear"] and said["clear"].endswith("holds.")
    assert "an interval lies wholly short of its margin" in said["short"]
    assert "an interval straddles its margin: these seeds cannot settle it" in said["unsure"]


def test_claim_one_reads_the_seeds_both_rows_hold_when_a_run_failed():
    sgd = row("sgd_uap", {0: 0.10, 1: 0.10, 2: 0.00}, {0: 0.90, 1: 0.90, 2: 0.90})
    cb = row("cb_uap", {0: 0.22, 1: 0.22}, {0: 0.90, 1: 0.90})  # seed 2's run failed
    sgd["seeds"], cb["seeds"] = [0, 1, 2], [0, 1]
    said = claim_balance("x", [sgd, cb], BAR)  # the row means differ by 0.153, the shared seeds by 0.120
    assert ("raises the test fooled-label entropy by 0.120 (the differences and values over the seeds both rows "
            "hold: 0, 1) (0.100 ± 0.000 → 0.220 ± 0.000;") in said  # seed 2's 0.00 is left out of the values too
    assert "(n = 2, 2;" in said
    assert said.endswith("does not hold.")


def test_claim_one_refuses_a_seed_whose_two_runs_attacked_different_networks():
    def on(r: dict, weights: str | None, sha: str, clean_acc: float = 0.9) -> dict:
        for record in r["_records"]:
            seed = record["seed"]
            model = {"digest": f"key-of-seed{seed}", "weights_fingerprint": weights and f"{weights}{seed}",
                     "sha256": f"{sha}{seed}"}
            record.update(_dir=f"{r['attack']}_seed{record['seed']}", provenance={"model": model})
            record["metrics"]["clean_acc"] = clean_acc
        return r

    def sgd():
        return row("sgd_uap", {0: 0.10, 1: 0.10}, {0: 0.90, 1: 0.90})

    def cb():
        return row("cb_uap", {0: 0.40, 1: 0.40}, {0: 0.90, 1: 0.90})

    assert claim_balance("x", [on(sgd(), "w", "f"), on(cb(), "w", "g")], BAR).endswith("holds.")  # same weights
    assert claim_balance("x", [on(sgd(), None, "f"), on(cb(), None, "f")], BAR).endswith("holds.")  # same file
    # files without a weights hash and of one clean accuracy are taken for one network (the same weights trained
    # twice make two files)
    assert claim_balance("x", [on(sgd(), None, "f"), on(cb(), "v", "g")], BAR).endswith("holds.")
    # the network trained again under the same key: other weights hashed, or (a record without the hash) another
    # file and another clean accuracy
    for older in (None, "w"):
        with pytest.raises(ValueError, match="seed 0: sgd_uap_seed0 and cb_uap_seed0 used different weights"):
            claim_balance("x", [on(sgd(), older, "f"), on(cb(), "v", "g", clean_acc=0.8)], BAR)
    with pytest.raises(ValueError, match="used different weights"):
        claim_balance("x", [on(sgd(), "w", "f"), on(cb(), "v", "f")], BAR)


def test_what_the_intervals_say_of_their_margins():
    from cbuap_runner.report.claims import claim_two_note
    from cbuap_runner.report.significance import CLEAR, SHORT, UNSURE, Paired, settles

    above, straddling, below = Paired(0.02, 0.01, 0.03, 3), Paired(-0.001, -0.005, 0.003, 3), Paired(-0.02, -0.03, -0.01, 3)
    one_seed = Paired(0.02, None, None, 1)
    assert settles([(above, 0.0), (straddling, -0.01)]) == CLEAR  # each interval against its own margin
    assert settles([(above, 0.0), (straddling, 0.0)]) == UNSURE
    assert settles([(straddling, 0.0), (below, 0.0)]) == SHORT  # one wholly short settles it, whatever the other
    assert settles([(above, 0.0), (one_seed, 0.0)]) is None
    assert claim_two_note((above, straddling)) == ", an interval straddles zero: these seeds cannot settle it"
    # one seed: its test images (the bootstrap) speak where the seeds cannot, and say so
    assert claim_two_note((one_seed, one_seed), (above, straddling)) == (
        ", an interval straddles zero: one seed's test images cannot settle it")
    assert claim_two_note((one_seed, one_seed), (above, above)) == ", both intervals clear zero"
    assert claim_two_note((one_seed, one_seed)) == ""
    assert claim_two_note((below, above), (above, above)) == ", an interval lies wholly below zero"  # seeds first


def test_claim_two_reads_the_seeds_both_rows_hold():
    from cbuap_runner.report.claims import claim_defence

    def defence(name: str, worst: dict[int, float]) -> dict:
        recs = runs("worst_adv_acc", worst, clean_acc={s: 0.9 for s in worst})
        return {"training": name, "status": "completed", "n": len(worst), "seeds": sorted(worst), "_records": recs,
                "worst_adv_acc": (sum(worst.values()) / len(worst), 0.0, len(worst)), "clean_acc": (0.9, 0.0, 3)}

    uat = defence("uat", {0: 0.50, 1: 0.50, 2: 0.20})
    cb = defence("cb_uat", {0: 0.45, 1: 0.45})  # below UAT on every seed both hold; above UAT's mean of three
    said = claim_defence("x", [uat, cb, defence("cw_uat", {0: 0.3, 1: 0.3, 2: 0.3})])
    assert "against uat worst-case -5.0 points (paired over 2 seeds: " in said and said.endswith("does not hold.")
    assert ("clean +0.0 points (paired: +0.0 [+0.0, +0.0]) (the differences over the seeds both rows hold: 0, 1), an "
            "interval lies wholly below zero; against cw_uat") in said
    one = claim_defence("x", [defence("uat", {0: 0.5}), defence("cb_uat", {0: 0.45}), defence("cw_uat", {0: 0.3})])
    assert "(paired over 1 seed: -5.0 (one seed: no interval))" in one


# ----------------------------------------------------------------------------- bootstrap over test images


def predictions(seed: int, n: int = 400, k: int = 5, fool: float = 0.5):
    import numpy as np

    from cbuap_runner.report.bootstrap import Predictions

    rng = np.random.default_rng(seed)
    label = np.arange(n) % k
    clean = np.where(rng.random(n) < 0.9, label, rng.integers(0, k, n))
    adv = np.where(rng.random(n) < fool, rng.integers(0, k, n), clean)
    return Predictions(label, clean, adv, k)


def test_bootstrap_metrics_follow_the_evaluation_metrics():
    import numpy as np
    import torch

    from cbuap_runner.metrics import _Counts
    from cbuap_runner.report.bootstrap import METRICS

    p = predictions(1)
    counts = _Counts(p.num_classes, 1, torch.device("cpu"))
    counts.add(torch.as_tensor(p.clean), torch.as_tensor(p.adv).view(1, -1), torch.as_tensor(p.label))
    expected = counts.finalize(0)
    whole = np.arange(len(p.label))[None, :]
    for name, fn in METRICS.items():
        assert fn(p, whole)[0] == pytest.approx(expected[name], abs=1e-9), name


def test_paired_bootstrap_interval():
    from cbuap_runner.report.bootstrap import paired_bootstrap

    a, b = predictions(1, fool=0.2), predictions(1, fool=0.8)
    same = paired_bootstrap(a, a, "fooling_rate", resamples=200)
    assert (same.mean, same.low, same.high, same.n) == (0.0, 0.0, 0.0, 400)
    got = paired_bootstrap(a, b, "fooling_rate", resamples=500)
    assert 0 < got.low < got.mean < got.high and got == paired_bootstrap(a, b, "fooling_rate", resamples=500)
    assert got.high - got.low < 0.2  # 400 images: a few points either side
    with pytest.raises(ValueError, match="not scored on the same test images"):
        paired_bootstrap(a, predictions(1, n=200), "fooling_rate")


def test_claim_one_adds_the_bootstrap_of_a_seed_whose_runs_saved_predictions(tmp_path):
    import numpy as np

    def saved(sgd: dict, cb: dict) -> tuple[dict, dict]:
        """The rows with seed 1's predictions saved (the last record of each)."""
        for r, fool in ((sgd, 0.9), (cb, 0.6)):
            p = predictions(1, fool=fool)
            folder = tmp_path / f"{r['attack']}{r['n']}"
            folder.mkdir()
            np.savez_compressed(folder / "predictions.npz", label=p.label, clean=p.clean, adv=p.adv)
            r["_records"][-1].update(_path=str(folder))
            r["_records"][-1]["metrics"].update(predictions_file="predictions.npz", label_hist=[0.2] * 5)
        return sgd, cb

    sgd, cb = saved(row("sgd_uap", {0: 0.1, 1: 0.2}, {0: 0.9, 1: 0.9}), row("cb_uap", {0: 0.3, 1: 0.4}, {0: 0.8, 1: 0.8}))
    text = claim_balance("FMNIST", [sgd, cb], BAR)
    assert "over the 400 test images of seed 1 (2,000 paired bootstrap resamples, 95 % percentile intervals): " \
           "fooled-label entropy " in text
    assert "fooling rate -" in text.split("bootstrap")[1]
    assert "test images cannot" not in text and "margin" not in text.split("bootstrap")[1]  # two seeds speak
    # one seed gives no t-interval: the margins are read over its test images (fooling rate ~30 points lower)
    one = claim_balance("FMNIST", list(saved(row("sgd_uap", {1: 0.2}, {1: 0.9}), row("cb_uap", {1: 0.4}, {1: 0.8}))), BAR)
    assert "points, an interval lies wholly short of its margin): the claim" in one


@pytest.mark.parametrize("content", [b"PK\x03\x04 cut short", b"not an array file", b""])
def test_an_unreadable_predictions_file_is_one_line_naming_it(tmp_path, content):
    from cbuap_runner.report.bootstrap import load_predictions

    (tmp_path / "predictions.npz").write_bytes(content)
    with pytest.raises(ValueError, match=r"predictions\.npz: not a predictions file"):
        load_predictions({"metrics": {"predictions_file": "predictions.npz"}, "_path": str(tmp_path)})


def test_claim_two_adds_the_bootstrap_of_a_seed_whose_pipelines_saved_predictions(tmp_path):
    import numpy as np

    from cbuap_runner.report.bootstrap import paired_defence_bootstrap, worst_case_accuracy
    from cbuap_runner.report.claims import claim_defence

    def defence(name: str, fools: dict[str, float]) -> dict:
        """A pipeline row of seeds 0 and 1 whose seed-0 run saved predictions under each attack of `fools`."""
        recs = runs("worst_adv_acc", {0: 0.5, 1: 0.5}, clean_acc={0: 0.9, 1: 0.9})
        folder = tmp_path / name
        folder.mkdir()
        attacks = {}
        for i, (attack, fool) in enumerate(fools.items()):
            p = predictions(1, fool=fool)  # the same images and clean predictions; δ's effect per attack
            adv = p.adv if attack != "uap" else np.where(np.arange(len(p.adv)) % (i + 2) == 0, p.clean, p.adv)
            np.savez_compressed(folder / f"predictions_{attack}.npz", label=p.label, clean=p.clean, adv=adv)
            attacks[attack] = {"predictions_file": f"predictions_{attack}.npz", "class_wise": attack == "cw_uap"}
        recs[0].update(_path=str(folder))
        recs[0]["metrics"]["attacks"] = attacks
        return {"training": name, "status": "completed", "n": 2, "seeds": [0, 1], "_records": recs,
                "worst_adv_acc": (0.5, 0.0, 2), "clean_acc": (0.9, 0.0, 2)}

    uat = defence("uat", {"sgd_uap": 0.8, "uap": 0.7, "cw_uap": 0.99})
    cb = defence("cb_uat", {"sgd_uap": 0.3, "uap": 0.4, "cw_uap": 0.99})
    said = claim_defence("x", [uat, cb, defence("cw_uat", {"sgd_uap": 0.5})])
    assert "(over the 400 test images of seed 0, 2,000 paired bootstrap resamples, 95 % percentile intervals: " \
           "worst case +" in said
    assert said.count("paired bootstrap") == 2  # against uat and against cw_uat
    # the worst case is each defence's lowest accuracy over its universal attacks: the class-wise one stays out
    from cbuap_runner.report.bootstrap import load_defence_predictions

    a, b = (load_defence_predictions(r["_records"][0]) for r in (uat, cb))
    assert sorted(a) == ["sgd_uap", "uap"]
    worst, clean = paired_defence_bootstrap(a, b, resamples=300)
    whole = np.arange(400)[None, :]
    assert worst.mean == pytest.approx(float(worst_case_accuracy(b, whole)[0] - worst_case_accuracy(a, whole)[0]))
    assert worst.low < worst.mean < worst.high and (clean.mean, clean.low, clean.high) == (0.0, 0.0, 0.0)
    assert load_defence_predictions(defence("none", {})["_records"][0]) is None  # saved none: no bootstrap
