"""Task-level bookkeeping: the pipeline's worst case over attacks and classes."""

from __future__ import annotations

from cbuap_runner.tasks import worst_case


def test_worst_class_is_the_minimum_over_every_attack_and_class():
    per_attack = {
        "sgd_uap": {"adv_acc": 0.30, "per_class_adv_acc": [0.20, 0.40, None]},  # worst on average
        "uap": {"adv_acc": 0.50, "per_class_adv_acc": [0.60, 0.05, None]},  # holds the worst class
        "cb_uap": {"adv_acc": 0.40, "per_class_adv_acc": [0.10, 0.70, None]},
    }
    w = worst_case(per_attack)
    assert (w["worst_attack"], w["worst_adv_acc"]) == ("sgd_uap", 0.30)
    assert (w["worst_class_adv_acc"], w["worst_class_attack"], w["worst_class"]) == (0.05, "uap", 1)
    assert w["per_class_worst_adv_acc"] == [0.10, 0.05, None]
