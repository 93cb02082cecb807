"""The Pareto front of points with two objectives, both maximised, and its 2-D hypervolume.

A point dominates another when it is at least as good in both objectives and better in one (Deb et al., "A fast
and elitist multiobjective genetic algorithm: NSGA-II", IEEE TEC 2002). The hypervolume is the area the points
dominate above a reference point; it grows only when the front moves, so its history over the trials shows when a
search has stopped finding better trade-offs. Pure Python: no numpy, no optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float]


def dominates(a: Point, b: Point) -> bool:
    """a is at least as good as b in both objectives and better in one."""
    return a[0] >= b[0] and a[1] >= b[1] and (a[0] > b[0] or a[1] > b[1])


def front_indices(points: Sequence[Point]) -> list[int]:
    """The indices of the non-dominated points, by the first objective descending (ties: the second descending).
    Equal points are all kept: neither dominates the other."""
    keep = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(keep, key=lambda i: (-points[i][0], -points[i][1], i))


def hypervolume(points: Sequence[Point], reference: Point = (0.0, 0.0)) -> float:
    """The area dominated by `points` and bounded below by `reference` (points not above it in both count nothing)."""
    above = sorted((p for p in points if p[0] > reference[0] and p[1] > reference[1]), key=lambda p: -p[0])
    area, height = 0.0, reference[1]
    for x, y in above:  # by x descending: each point adds the strip above the highest y seen so far
        if y > height:
            area += (x - reference[0]) * (y - height)
            height = y
    return area


def hypervolume_history(points: Sequence[Point | None], reference: Point = (0.0, 0.0)) -> list[float]:
    """The hypervolume after each point in turn; a missing or non-finite point (a failed trial) leaves it as it was."""
    seen: list[Point] = []
    history = []
    for p in points:
        if p is not None and all(math.isfinite(v) for v in p):
            seen.append(p)
        history.append(hypervolume(seen, reference))
    return history


def last_quarter_change(history: Sequence[float]) -> tuple[int, float] | None:
    """(the trials in the last quarter, the hypervolume gained over them); None for fewer than 4 trials."""
    if len(history) < 4:
        return None
    quarter = len(history) // 4
    return quarter, history[-1] - history[-1 - quarter]


def front_stable(history: Sequence[float], gain: float, min_runs: int) -> bool:
    """Whether a front has stopped moving: at least `min_runs` runs, and over the last quarter of them the
    hypervolume gained less than `gain` times its final value (a front with no area yet is not stable)."""
    change = last_quarter_change(history)
    if change is None or len(history) < min_runs or history[-1] <= 0:
        return False
    return change[1] < gain * history[-1]
