"""Budgeted choice of one option per item: the multiple-choice knapsack behind dynamic mixed
precision.

Each item (a tensor) has options (a GGUF type) with a size in bytes and a predicted damage;
:func:`allocate` picks one option per item minimizing the summed damage with the summed size
at most the budget.

Method:

1. Dominated options go (another option is no larger and does no more damage).
2. Lagrangian relaxation, solved exactly by the greedy over convex-hull segments: start from
   every item's smallest option and take the hull upgrades in order of damage saved per byte
   while they fit; the first that does not fit marks the Lagrange multiplier (its slope).
3. Exact repair on the core: the items whose hull slopes lie nearest the multiplier are
   re-solved exactly together (a Pareto-frontier dynamic program over all their options, on
   the budget the others leave), then single-item upgrades that still fit are taken greedily.
   When every item fits in the core (small instances) the answer is the exact optimum;
   ``tests/test_dynamic.py`` checks it against brute force.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Allocation", "BudgetError", "allocate"]

# items solved exactly together; the frontier of a core this size stays small
CORE_ITEMS = 20
MAX_FRONTIER = 400_000


class BudgetError(ValueError):
    """The budget is below the smallest reachable total."""

    def __init__(self, message: str, min_total: int) -> None:
        super().__init__(message)
        self.min_total = min_total


@dataclass
class Allocation:
    choice: list[int]  # option index per item (into the caller's option lists)
    total_bytes: int
    total_damage: float
    lagrange: float  # damage per byte at the break (0 when everything fits at the top)
    exact: bool  # every item was in the exact core


def _pareto(options: Sequence[tuple[int, float]]) -> list[int]:
    """Indices of the non-dominated options, by size ascending (damage strictly falling)."""
    order = sorted(range(len(options)), key=lambda k: (options[k][0], options[k][1]))
    keep: list[int] = []
    best = float("inf")
    for k in order:
        b, d = options[k]
        if d < best:
            if keep and options[keep[-1]][0] == b:
                keep.pop()
            keep.append(k)
            best = d
    return keep


def _hull(options: Sequence[tuple[int, float]], pareto: list[int]) -> list[int]:
    """The lower convex hull of the Pareto options (size ascending)."""
    hull: list[int] = []
    for k in pareto:
        while len(hull) >= 2:
            b1, d1 = options[hull[-2]]
            b2, d2 = options[hull[-1]]
            b3, d3 = options[k]
            # drop the middle point when it lies on/above the chord from 1 to 3
            if (d2 - d1) * (b3 - b1) >= (d3 - d1) * (b2 - b1):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def _frontier_dp(
    items: list[list[tuple[int, float]]], budget: int
) -> tuple[list[int], int, float] | None:
    """Exact minimum-damage choice for ``items`` with total size <= ``budget``; None when the
    frontier grows past :data:`MAX_FRONTIER` states."""
    sizes = np.zeros(1, dtype=np.int64)
    dmg = np.zeros(1, dtype=np.float64)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for opts in items:
        ob = np.array([o[0] for o in opts], dtype=np.int64)
        od = np.array([o[1] for o in opts], dtype=np.float64)
        cs = (sizes[:, None] + ob[None, :]).reshape(-1)
        cd = (dmg[:, None] + od[None, :]).reshape(-1)
        parent = np.repeat(np.arange(sizes.size), ob.size)
        opt = np.tile(np.arange(ob.size), sizes.size)
        ok = cs <= budget
        cs, cd, parent, opt = cs[ok], cd[ok], parent[ok], opt[ok]
        if cs.size == 0:
            return None
        order = np.lexsort((cd, cs))
        cs, cd, parent, opt = cs[order], cd[order], parent[order], opt[order]
        run_min = np.minimum.accumulate(cd)
        keep = np.ones(cs.size, dtype=bool)
        keep[1:] = cd[1:] < run_min[:-1]
        cs, cd, parent, opt = cs[keep], cd[keep], parent[keep], opt[keep]
        if cs.size > MAX_FRONTIER:
            return None
        sizes, dmg = cs, cd
        back.append((parent, opt))
    best = int(np.argmin(dmg))
    total_b, total_d = int(sizes[best]), float(dmg[best])
    choice = [0] * len(items)
    idx = best
    for i in range(len(items) - 1, -1, -1):
        parent, opt = back[i]
        choice[i] = int(opt[idx])
        idx = int(parent[idx])
    return choice, total_b, total_d


def allocate(
    items: Sequence[Sequence[tuple[int, float]]], budget: int, core_items: int = CORE_ITEMS
) -> Allocation:
    """One option per item, ``options = [(bytes, damage), ...]``, minimizing the summed
    damage with summed bytes <= ``budget``. Raises :class:`BudgetError` when even the
    smallest options exceed the budget."""
    if not items:
        return Allocation([], 0, 0.0, 0.0, True)
    for i, opts in enumerate(items):
        if not opts:
            raise ValueError(f"item {i} has no options")
    pareto = [_pareto(opts) for opts in items]
    min_total = sum(items[i][p[0]][0] for i, p in enumerate(pareto))
    if min_total > budget:
        raise BudgetError(
            f"the budget of {budget} bytes is below the smallest reachable total of "
            f"{min_total} bytes",
            min_total,
        )
    hulls = [_hull(items[i], p) for i, p in enumerate(pareto)]
    # hull upgrade segments: (damage saved per byte, item, step); slopes fall along a hull
    segs = []
    for i, h in enumerate(hulls):
        for s in range(1, len(h)):
            b0, d0 = items[i][h[s - 1]]
            b1, d1 = items[i][h[s]]
            segs.append(((d0 - d1) / (b1 - b0), i, s))
    segs.sort(key=lambda t: -t[0])
    pos = [0] * len(items)  # position on each hull
    total = min_total
    lagrange = 0.0
    broke = len(segs)
    for j, (slope, i, s) in enumerate(segs):
        if s != pos[i] + 1:
            continue  # an earlier segment of this item did not fit
        db = items[i][hulls[i][s]][0] - items[i][hulls[i][s - 1]][0]
        if total + db <= budget:
            pos[i] = s
            total += db
        elif broke == len(segs):
            broke = j
            lagrange = slope
    choice = [hulls[i][pos[i]] for i in range(len(items))]

    # exact core: the items owning the segments nearest the break
    core: list[int] = []
    if broke < len(segs):
        lo, hi = broke, broke + 1
        seen: set[int] = set()
        while len(core) < core_items and (lo >= 0 or hi < len(segs)):
            for j in (lo, hi):
                if 0 <= j < len(segs) and segs[j][1] not in seen and len(core) < core_items:
                    seen.add(segs[j][1])
                    core.append(segs[j][1])
            lo, hi = lo - 1, hi + 1
    if len(items) <= core_items:
        core = list(range(len(items)))
    exact = len(core) == len(items)
    if core:
        rest = sum(items[i][choice[i]][0] for i in range(len(items)) if i not in set(core))
        sub = [[items[i][k] for k in pareto[i]] for i in core]
        solved = _frontier_dp(sub, budget - rest)
        if solved is not None:
            sub_choice, _, _ = solved
            for i, k in zip(core, sub_choice):
                choice[i] = pareto[i][k]
        else:
            exact = False
    # greedy fill: single upgrades that still fit, best damage saved first
    total = sum(items[i][choice[i]][0] for i in range(len(items)))
    while True:
        best = None
        for i, opts in enumerate(items):
            b0, d0 = opts[choice[i]]
            for k in pareto[i]:
                b, d = opts[k]
                if d < d0 and total - b0 + b <= budget:
                    gain = d0 - d
                    if best is None or gain > best[0]:
                        best = (gain, i, k)
        if best is None:
            break
        _, i, k = best
        total += items[i][k][0] - items[i][choice[i]][0]
        choice[i] = k
    damage = float(sum(items[i][choice[i]][1] for i in range(len(items))))
    return Allocation(choice, int(total), damage, float(lagrange), exact)
