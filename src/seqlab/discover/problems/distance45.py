"""`distance-4-5`: n x n 0/1 boards with no two 1s at Euclidean distance 4 or 5
(squared distance 16 or 25: offsets (0,4), (4,0), (0,5), (5,0), (3,4), (4,3)
up to sign); maximise the number of 1s. A maximum independent set in a graph
with at most 16 neighbours per cell.

violations(c) = number of conflicting pairs. Construction: sorted int64 cell
indices r * n + c of the 1s. Encoding: 2 characters per 1 (row, column); see
`_grid.py`. Score: the number of 1s.
"""

from __future__ import annotations

import numpy as np

from ._grid import GridPointProblem
from ._grid_kernel import KIND_DIST45, _neighbour_table

FORBIDDEN = (16, 25)


class Distance45(GridPointProblem):
    name = "distance-4-5"
    description = "n x n 0/1 board, no two 1s at distance 4 or 5; maximise the 1s"
    kind = KIND_DIST45
    t_hi, t_lo, period, focus = 0.8, 0.1, 50_000, 0.0
    # n=1..3: every cell (no two cells are 4 apart); n=4: 16, also every cell (largest
    # distance sqrt(18) < 5, and distance exactly 4 needs 5 rows or columns).
    # n=4..10: exact maxima, scipy HiGHS MILP with optimal status and an independent
    # exact branch and bound for n <= 9 (shared/reference/discovery-problems.md, section 7).
    best_known_table = {1: 1, 2: 4, 3: 9, 4: 16, 5: 17, 6: 18, 7: 20, 8: 22, 9: 27, 10: 34}

    def _aux(self):
        n, N = self.n, self.N
        return _neighbour_table(n, FORBIDDEN), (1, 1), 1, N

    def violations(self, c) -> int:
        p = self.points(c)
        d = ((p[:, None, :] - p[None, :, :]) ** 2).sum(axis=2)
        return int(np.isin(d, FORBIDDEN).sum() // 2)

    def pretty(self, c) -> str:
        g = np.zeros((self.n, self.n), dtype=int)
        for r, col in self.points(c):
            g[r, col] = 1
        return "\n".join("".join(map(str, row)) for row in g)
