"""`isosceles-free`: the largest set of points of the n x n grid with no isosceles
triangle, flat ones included (PatternBoost, Charton-Ellenberg-Wagner-Williamson
2024; AlphaEvolve problem 59; Ellenberg's 2021 Riddler).

No three distinct chosen points a, b, c with |ab| = |bc|. On a line the only
equality is b = midpoint of a and c, so flat triangles forbid midpoints; the
integer grid has no equilateral triangle, so every bad triple has one apex.
Equivalently: from every chosen point, the squared distances to the other
chosen points are pairwise distinct. violations(c) = number of bad (apex,
{a, c}) triples.

Construction: sorted int64 cell indices r * n + c. Encoding: 2 characters
per point (row, column); see `_grid.py`. Score: the number of points.
"""

from __future__ import annotations

import numpy as np

from ._grid import GridPointProblem
from ._grid_kernel import KIND_ISOSCELES


class IsoscelesFree(GridPointProblem):
    name = "isosceles-free"
    description = "points of the n x n grid, no isosceles triangle (flat ones included); maximise points"
    kind = KIND_ISOSCELES
    max_n = 128
    # cool cycles (V ~ 1-8 at k ~ 2n) with a kick of 16 random relocations at the start
    # of each: hotter cycles melt the set (V ~ 15 at T = 1) and cost O(n^2) per accepted move
    t_hi, t_lo, period, focus, kick = 0.35, 0.1, 500_000, 0.9, 16
    # symmetric restarts: rot90 and d4 orbits contain squares (always isosceles), so the
    # groups without a quarter turn; orbit moves change 2-4 points, hence hotter cycles
    # (at 0.7-1.2 restarts on n = 18 stuck below 32, at 2-3 they reached it in seconds)
    sym_groups = ("diag2", "rot180", "mirror", "diag", "d2")
    sym_t_hi, sym_t_lo, sym_period = 3.0, 0.5, 100_000
    # Sources (see shared/reference/discovery-problems.md, section 2):
    #   n=1..7: exact, recomputed by ILP (HiGHS) and the Riddler's brute force;
    #   n=8..10: printed in the PatternBoost paper (and the makemore-for-maths lecture);
    #   n=11..18, 21, 23, 25, 27, 32: PatternBoost's figure (the paper says SAT solvers
    #     settle n <= ~32); n=11..13 re-derived by exhaustive branch and bound
    #     (Kevin11Kaikai/grid_no_isosceles_bigbang); 16: 28, 27: 48 and 32: 56 are printed;
    #   n=14: 24, not the figure's 23: seqlab's local search found a 24-point set in 5 s,
    #     checked by brute force over all triples (tests/test_discover_problems.py);
    #   n=64: 112 and n=100: 164: AlphaEvolve (2025) constructions, checked valid
    #     (previous records 110 and 160 by PatternBoost).
    best_known_table = {1: 1, 2: 2, 3: 4, 4: 6, 5: 7, 6: 9, 7: 10, 8: 13, 9: 16, 10: 18,
                        11: 18, 12: 20, 13: 22, 14: 24, 15: 25, 16: 28, 17: 30, 18: 32,
                        21: 36, 23: 40, 25: 44, 27: 48, 32: 56, 64: 112, 100: 164}

    def _aux(self):
        n, N = self.n, self.N
        D = 2 * (n - 1) ** 2 + 1  # squared distances 0..D-1
        cap = min(N, 3 * n + 10)  # more than any isosceles-free set holds
        return np.zeros((1, 1), dtype=np.int32), (cap, D), D, cap

    def violations(self, c) -> int:
        p = self.points(c)
        total = 0
        for i in range(len(p)):
            d = ((p - p[i]) ** 2).sum(axis=1)
            d = np.delete(d, i)
            _, counts = np.unique(d, return_counts=True)
            total += int((counts * (counts - 1) // 2).sum())
        return total
