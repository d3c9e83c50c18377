"""`no-three-in-line`: the largest set of points of the n x n grid with no three
on a line (any slope). At most 2 per row, so at most 2n; 2n is attained for
every n <= 46 (and n = 48, 50, 52).

violations(c) = number of collinear triples. Construction: sorted int64 cell
indices r * n + c. Encoding: 2 characters per point (row, column); see
`_grid.py`. Score: the number of points.
"""

from __future__ import annotations

from math import gcd


from ._grid import GridPointProblem
from ._grid_kernel import KIND_LINES, _direction_table


class NoThreeInLine(GridPointProblem):
    name = "no-three-in-line"
    description = "points of the n x n grid, no three collinear; maximise points (2n is the upper bound)"
    kind = KIND_LINES
    # most moves slide a point along its row or column (keeps that line's count):
    # a 2n set has exactly two points in every row and column
    t_hi, t_lo, period, focus, line_moves = 0.3, 0.1, 100_000, 0.5, 0.8
    # symmetric restarts over every symmetry class of the square (Flammenkamp's 2n
    # solutions for large n were found class by class)
    sym_groups = ("rot90", "rot180", "diag2", "d2", "mirror", "diag", "d4")
    sym_restart = 300_000

    max_n = 64  # the direction table is n^2 x n^2
    # 2n for 2 <= n <= 46 and n in {48, 50, 52}: Flammenkamp's solutions, OEIS A000769
    # comment ("at least one solution is known for all n <= 46 and n=48, 50, 52"),
    # MathWorld "No-Three-in-a-Line Problem"; 2n is also the upper bound (two per row),
    # so these values are exact. n=1: 1.
    best_known_table = {1: 1, **{n: 2 * n for n in list(range(2, 47)) + [48, 50, 52]}}

    def _aux(self):
        n, N = self.n, self.N
        return _direction_table(n), (1, 1), (2 * n + 1) ** 2, min(N, 2 * n)

    def violations(self, c) -> int:
        p = self.points(c)
        total = 0
        for i in range(len(p)):
            dirs = {}
            for j in range(len(p)):
                if j == i:
                    continue
                dr, dc = int(p[j, 0] - p[i, 0]), int(p[j, 1] - p[i, 1])
                g = gcd(dr, dc)
                dr, dc = dr // g, dc // g
                if dr < 0 or (dr == 0 and dc < 0):
                    dr, dc = -dr, -dc
                dirs[(dr, dc)] = dirs.get((dr, dc), 0) + 1
            total += sum(m * (m - 1) // 2 for m in dirs.values())
        return total // 3  # each collinear triple is seen from each of its 3 points
