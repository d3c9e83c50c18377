"""Point sets in the n x n grid with a forbidden pattern: shared encoding, drawing
and the simulated-annealing kernel used by isosceles-free, no-three-in-line
and distance-4-5.

Construction: a sorted int64 array of distinct cell indices `r * n + c`
(row r, column c, both 0-based).

Encoding: two characters per point, row then column, points in sorted
(row-major) order; value v is `value_alphabet(n)[v]` ("0".."9", "a".."z",
"A".."Z", then Unicode letters). So a k-point set is 2k tokens.

The annealing kernel (violation counts, moves, schedule) is in `_grid_kernel.py`;
symmetric restarts in `_symmetry.py`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ...errors import SeqlabError
from .._jit import rand_int, rng_state
from ..problem import as_rng, derive_seed
from ._base import Budget, KernelProblem, PairCodec, drive
from ._grid_kernel import BEST_K, K, T, _anneal, _complete, _load
from ._symmetry import _sym_anneal, _sym_start, orbit_table


class GridPointProblem(PairCodec, KernelProblem):
    """Base class: a set of cells of the n x n grid (see the module docstring)."""

    kind: int = -1
    line_moves = 0.0  # probability that a move slides a point along its row or column
    swap_moves = 0.0  # probability of a rook swap (two points exchange columns)
    tournament = 1  # a move's new cell: the least conflicted of this many random free cells
    kick = 0  # at the start of each temperature cycle, relocate this many random points
    near_moves = 0.0  # probability that a move steps a point at most 2 rows and columns
    # symmetric restarts (see _symmetry.py): a from-scratch start spends `sym_share` of its
    # budget, at most `sym_restarts` x `sym_restart` moves, in restarts of up to `sym_restart`
    # moves annealing over the orbits of a random group in `sym_groups` (none: off) with
    # their own cyclic schedule, then anneals the best symmetric set found without the
    # restriction. The cap keeps a long single start from spending minutes where no
    # symmetric optimum exists
    sym_groups: tuple = ()
    sym_share = 0.5
    sym_restarts = 8
    sym_restart = 250_000
    sym_t_hi, sym_t_lo, sym_period = 1.0, 0.2, 100_000

    def params(self) -> np.ndarray:
        return np.array([self.t_hi, self.t_lo, self.period, self.focus, self.line_moves, self.swap_moves,
                         self.tournament, self.kick, self.near_moves], dtype=np.float64)

    def __init__(self, n: int):
        super().__init__(n)
        self.N = n * n
        self._init_codec(n)
        self._tables = None
        self._orbit_tables: dict = {}

    # ---------------------------------------------------------- encoding
    def decode(self, s: str):
        cells = self._decode_pairs(s)
        if cells is None:
            return None
        return np.unique(cells[:, 0] * self.n + cells[:, 1])

    def canonical(self, cells) -> np.ndarray:
        c = np.unique(np.asarray(cells, dtype=np.int64).ravel())
        if c.size and (c[0] < 0 or c[-1] >= self.N):
            raise SeqlabError(f"problem '{self.name}': cell index out of range for n={self.n}")
        return c

    def from_points(self, points) -> np.ndarray:
        """Construction from (row, col) pairs."""
        p = np.asarray(points, dtype=np.int64).reshape(-1, 2)
        if p.size and (p.min() < 0 or p.max() >= self.n):
            raise SeqlabError(f"problem '{self.name}': point outside the {self.n}x{self.n} grid")
        return np.unique(p[:, 0] * self.n + p[:, 1])

    def points(self, c) -> np.ndarray:
        """(k, 2) array of (row, col)."""
        c = np.asarray(c, dtype=np.int64)
        return np.stack([c // self.n, c % self.n], axis=1)

    def _well_formed(self, c) -> bool:
        c = np.asarray(c)
        if c.ndim != 1 or (c.size and (c.min() < 0 or c.max() >= self.N)):
            return False
        return bool(np.all(np.diff(c) > 0))

    # ---------------------------------------------------------- scoring
    def score(self, c) -> float:
        return float(len(c))

    def is_valid(self, c) -> bool:
        return self._well_formed(c) and self.violations(c) == 0

    # ---------------------------------------------------------- search
    def _aux(self):
        """(tab, cnt-shape, scratch size, capacity) for this problem's kernel."""
        raise NotImplementedError

    def _kernel_tables(self) -> tuple:
        if self._tables is None:
            self._tables = self._aux()
        return self._tables

    def _state(self, seed: int) -> tuple:
        """Fresh kernel state, in kernel argument order:
        (pts, in_set, sc, best, tab, cnt, ac, mult, stamp, rng)."""
        tab, cnt_shape, scratch, cap = self._kernel_tables()
        return (np.zeros(cap, dtype=np.int64), np.zeros(self.N, dtype=np.uint8), np.zeros(5, dtype=np.int64),
                np.zeros(cap, dtype=np.int64), tab, np.zeros(cnt_shape, dtype=np.int16),
                np.zeros(self.N, dtype=np.int64), np.zeros(scratch, dtype=np.int64),
                np.zeros(scratch, dtype=np.int64), rng_state(seed))

    def _cells(self, start) -> np.ndarray:
        cells = np.zeros(0, dtype=np.int64) if start is None else np.asarray(start, dtype=np.int64).ravel()
        return cells[(cells >= 0) & (cells < self.N)]

    def _run_one(self, start, seed: int, budget: Budget, target: float):
        tgt = 1 << 62 if target >= 1 << 62 else int(math.ceil(target))
        sym_cells, sym_moves = None, 0
        if start is None and self.sym_groups and self.sym_share > 0:
            sym_cells, sym_moves = self._symmetric_phase(seed, budget, tgt)
            if len(sym_cells) >= tgt:
                return sym_cells, sym_moves
            start = sym_cells
        st = self._state(seed)
        a = (self.kind, self.n)
        _load(*a, self._cells(start), *st)
        _complete(*a, *st)
        prm = self.params()
        drive(budget, lambda step: _anneal(*a, *st, step, tgt, prm))
        sc, best = st[2], st[3]
        return np.sort(best[: sc[BEST_K]]), int(sc[T]) + sym_moves

    def _orbits(self, group: str) -> np.ndarray:
        """Orbit table of `group` without the orbits that are invalid on their own."""
        if group not in self._orbit_tables:
            orb = orbit_table(self.n, group)
            cap = self._kernel_tables()[3]
            ok = [i for i, row in enumerate(orb)
                  if (row >= 0).sum() <= cap and self.violations(np.sort(row[row >= 0])) == 0]
            self._orbit_tables[group] = orb[ok]
        return self._orbit_tables[group]

    def _symmetric_phase(self, seed: int, budget: Budget, tgt: int):
        """`sym_share` of a from-scratch start's budget, at most `sym_restarts` x `sym_restart`
        moves, in restarts of up to `sym_restart` moves, each annealing over the orbits of a
        random group in `sym_groups` (see `_symmetry.py`). Returns the best set found (valid;
        maybe empty) and the moves made; the moves are taken off `budget`."""
        moves = min(int(min(budget.left, 1 << 61) * self.sym_share), self.sym_restarts * self.sym_restart)
        deadline = budget.deadline
        if deadline is not None:
            now = time.perf_counter()
            deadline = now + self.sym_share * max(0.0, deadline - now)
        phase = Budget(moves, deadline, budget.stop)
        rng = rng_state(derive_seed(seed, 0x5EED))
        groups = [g for g in self.sym_groups if len(self._orbits(g))]
        best, total, r = np.zeros(0, dtype=np.int64), 0, 0
        a = (self.kind, self.n)
        while groups and phase.left > 0 and len(best) < tgt:
            if (phase.deadline is not None and time.perf_counter() >= phase.deadline) or (
                    phase.stop is not None and phase.stop()):
                break
            orb = self._orbits(groups[int(rand_int(rng, len(groups)))])
            r += 1
            st = self._state(derive_seed(seed, r))
            chosen = np.zeros(len(orb) + 1, dtype=np.int64)
            _sym_start(*a, orb, chosen, *st)
            restart = Budget(min(self.sym_restart, phase.left), phase.deadline, phase.stop)
            prm = (self.sym_t_hi, self.sym_t_lo, float(self.sym_period))
            drive(restart, lambda step: _sym_anneal(*a, orb, chosen, *st, step, tgt, *prm))
            sc = st[2]
            made = int(sc[T])
            phase.left -= max(made, 1000)  # a restart that cannot grow still costs something
            total += made
            if sc[BEST_K] > len(best):
                best = np.sort(st[3][: sc[BEST_K]])
        budget.left -= total
        return best, total

    def repair(self, c, rng=None):
        """Drop the point in most violations (random ties) until valid; no completion."""
        st = self._state(int(as_rng(rng).integers(0, 2**62)))
        _load(self.kind, self.n, np.unique(self._cells(c)), *st)
        return np.sort(st[0][: st[2][K]])

    # ---------------------------------------------------------- views
    def symmetries(self, c) -> list:
        """The 8 images under the square's symmetry group (rotations, reflections)."""
        p = self.points(c)
        r, col, m = p[:, 0], p[:, 1], self.n - 1
        imgs = [(r, col), (col, m - r), (m - r, m - col), (m - col, r),
                (r, m - col), (m - r, col), (col, r), (m - col, m - r)]
        return [np.sort(a * self.n + b) for a, b in imgs]

    def pretty(self, c) -> str:
        g = np.full((self.n, self.n), ".", dtype="<U1")
        for r, col in self.points(c):
            g[r, col] = "#"
        return "\n".join("".join(row) for row in g)

    def draw(self, c, path) -> None:
        from ...atomic import atomic_path
        from ...plots import _plt

        plt = _plt()
        n = self.n
        size = min(9.0, max(3.0, 0.25 * n))
        fig, ax = plt.subplots(figsize=(size, size))
        g = np.arange(n)
        gx, gy = np.meshgrid(g, g)
        ax.scatter(gx.ravel(), gy.ravel(), s=max(1, 200 / n), color="0.85")
        p = self.points(c)
        if len(p):
            ax.scatter(p[:, 1], p[:, 0], s=max(8, 2400 / n), color="tab:red", zorder=3)
        ax.set_xlim(-0.7, n - 0.3)
        ax.set_ylim(n - 0.3, -0.7)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        bk = self.best_known(n)
        ax.set_title(f"{self.name} n={n}: {len(p)} points" + (f" (best known {bk:g})" if bk is not None else ""))
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
