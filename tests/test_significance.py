"""Paired per-seed differences and their 95 % intervals, and the claim sentences that state them."""

from __future__ import annotations

import pytest

from cbuap_runner.report.claims import Thresholds, claim_balance
from cbuap_runner.report.significance import interval, paired, t975

BAR = Thresholds(fooled_entropy_gain=0.15, fooling_rate_loss=0.02, tuning_fooling_margin=0.02)


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
