"""How sure a claim sentence can be: the paired per-seed difference of a metric between two table rows, with a 95 %
Student-t interval over the seeds both rows hold.

Runs of one seed share their model and their crafting and test images, so the difference seed by seed removes what
the seeds have in common; the interval is mean ± t(0.975, n − 1) · sd / √n of those differences (n ≥ 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .records import hashable, metric

# t(0.975, df) for df = 1..30; beyond, the Cornish-Fisher expansion around the normal quantile (error < 1e-3)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` ≥ 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"df={df}: needs at least one degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Paired:
    """The mean of the per-seed differences b − a, its 95 % interval (None for one seed) and the seed count."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def text(self, scale: float = 1.0, digits: int = 3) -> str:
        """`+0.154 [+0.020, +0.288]` (times `scale`), or `+0.154 (one seed: no interval)`."""
        if self.low is None:
            return f"{self.mean * scale:+.{digits}f} (one seed: no interval)"
        return f"{self.mean * scale:+.{digits}f} [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"


def _by_seed(row: Mapping[str, Any], name: str) -> dict[str, float]:
    values = {hashable(r.get("seed")): metric(r, name) for r in row.get("_records", ()) if r.get("seed") is not None}
    return {seed: v for seed, v in values.items() if v is not None}


def paired(a: Mapping[str, Any], b: Mapping[str, Any], name: str) -> Paired | None:
    """b − a of metric `name`, seed by seed over the seeds both rows hold (None when they share none)."""
    left, right = _by_seed(a, name), _by_seed(b, name)
    diffs = [right[s] - left[s] for s in sorted(left.keys() & right.keys())]
    return interval(diffs)


def interval(diffs: Sequence[float]) -> Paired | None:
    """The mean of `diffs` with its 95 % Student-t interval."""
    n = len(diffs)
    if n == 0:
        return None
    mean = sum(diffs) / n
    if n == 1:
        return Paired(mean, None, None, 1)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return Paired(mean, mean - half, mean + half, n)


CLEAR, SHORT, UNSURE = "clear", "short", "unsure"


def settles(intervals: Sequence[tuple[Paired | None, float]]) -> str | None:
    """Where 95 % intervals lie against the margins their differences must reach, each given as (difference,
    margin): CLEAR (every interval at or above its margin), SHORT (one wholly below its margin) or UNSURE (one
    straddles its margin); None where a difference has no interval (one seed)."""
    if any(p is None or p.low is None for p, _ in intervals):
        return None
    if all(p.low >= margin for p, margin in intervals):
        return CLEAR
    if any(p.high < margin for p, margin in intervals):
        return SHORT
    return UNSURE
