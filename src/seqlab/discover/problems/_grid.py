"""Point sets in the n x n grid with a forbidden pattern: shared encoding, drawing
and the simulated-annealing kernel used by isosceles-free, no-three-in-line
and distance-4-5.

Construction: a sorted int64 array of distinct cell indices `r * n + c`
(row r, column c, both 0-based).

Encoding: two characters per point, row then column, points in sorted
(row-major) order; value v is `value_alphabet(n)[v]` ("0".."9", "a".."z",
"A".."Z", then Unicode letters). So a k-point set is 2k tokens.

Violations: a problem-specific count of "bad" configurations (isosceles
triples, collinear triples, conflicting pairs), zero iff valid. The kernel
never recounts: it keeps, for every cell, the number of violations the cell is
in (or would create), so the exact change of a swap costs O(k) or O(1) (see
`_add_delta`); accepted moves update the counts (see the note below K, V, ...).

Search (`_anneal`): at a fixed size k, simulated annealing on the number of
violations; each time it reaches 0 the set is recorded and grows by the free
cell adding the fewest violations (random ties). A move takes a chosen point
(with probability `focus` one that is in a violation) to a free cell: a random
one, or (probability `line_moves`) one in the same row or column, keeping the
other line's count; `swap_moves` adds rook swaps of two points' columns;
`tournament` > 1 proposes the least conflicted of several random cells. The
temperature cycles geometrically from t_hi to t_lo every `period` moves (a
fixed temperature was fragile), and `kick` random relocations open each cycle
(a cheap reheat). A run starts from a randomised greedy maximal set, or from
a given start that is first repaired (drop the point in most violations until
valid) and then completed greedily. Each problem sets its own schedule.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ...errors import SeqlabError
from .._jit import argmax_random_tie, njit, rand_float, rand_int, rng_state, shuffle, temperature, tie_min
from ..problem import as_rng, derive_seed
from ._base import Budget, KernelProblem, PairCodec, drive

KIND_ISOSCELES = 0
KIND_LINES = 1
KIND_DIST45 = 2

# sc (int64 scalars): k, violations, best_k, moves done (schedule clock), epoch of the
# scratch stamps
K, V, BEST_K, T, EPOCH = 0, 1, 2, 3, 4

# no-three-in-line and distance-4-5 keep ac[x] for every cell x: the violations x is
# in (x chosen) or would create (x free). Removing p saves ac[p], adding c costs
# ac[c], and a swap p -> c costs ac[c] - ac[p] minus the violations holding both,
# found in O(k); keeping ac costs O(k n) (lines) or O(1) (distance-4-5) per
# accepted move, and far fewer moves are accepted than proposed. isosceles-free
# instead keeps, per chosen point, the number of chosen points at each squared
# distance (O(k) per accepted move) and scores a move in O(k): keeping ac for all
# cells costs O(n^2) per accepted move, too slow in the hot part of a cycle.


# ------------------------------------------------------------------ kernel
@njit
def _dist(n, a, b):
    ra = a // n
    rb = b // n
    dr = ra - rb
    dc = (a - ra * n) - (b - rb * n)
    return dr * dr + dc * dc


@njit
def _add_delta(kind, n, c, skip, pts, k, tab, cnt, ac, mult, stamp, sc):
    """Violations created by adding free cell c to the set pts[:k] minus slot `skip`
    (skip = -1: nothing removed). With c = pts[skip] it is the number of
    violations that involve that point (what removing it would save)."""
    if kind == KIND_ISOSCELES:
        return _iso_delta(n, c, skip, pts, k, cnt, mult, stamp, sc)
    v = ac[c]
    if skip < 0 or pts[skip] == c:
        return v
    p = pts[skip]
    if kind == KIND_DIST45:
        d = _dist(n, c, p)
        if d == 16 or d == 25:
            v -= 1
    else:
        dp = tab[c, p]  # the pairs {p, q} on the line cp are gone
        for j in range(k):
            if j != skip and tab[c, pts[j]] == dp:
                v -= 1
    return v


@njit
def _iso_delta(n, c, skip, pts, k, cnt, mult, stamp, sc):
    """isosceles, in O(k): triples with apex c (equal distances seen from c, counted
    with scratch stamps) and triples with apex q in which c is a leg (cnt[j, d] =
    chosen points at squared distance d from the point in slot j)."""
    sc[EPOCH] += 1
    e = sc[EPOCH]
    v = 0
    p = pts[skip] if skip >= 0 else -1
    for j in range(k):
        if j == skip:
            continue
        q = pts[j]
        d = _dist(n, c, q)
        if stamp[d] != e:
            stamp[d] = e
            mult[d] = 1
        else:
            v += mult[d]
            mult[d] += 1
        w = cnt[j, d]
        if p >= 0 and _dist(n, q, p) == d:
            w -= 1  # the removed point no longer counts
        v += w
    return v


@njit
def _walk_lines(n, c, pts, k, skip, in_set, tab, ac, mult, stamp, sc, sign):
    """no-three-in-line: cell c joins (sign=+1) or leaves (sign=-1) the set pts[:k]
    minus slot `skip`. For every line through c and m >= 1 chosen points, each
    other cell x on it gains (loses) the pairs {c, q}: m of them, m - 1 if x is chosen."""
    sc[EPOCH] += 1
    e = sc[EPOCH]
    for j in range(k):
        if j == skip:
            continue
        d = tab[c, pts[j]]
        if stamp[d] != e:
            stamp[d] = e
            mult[d] = 1
        else:
            mult[d] += 1
    sc[EPOCH] += 1
    e2 = sc[EPOCH]
    w = 2 * n + 1
    rc = c // n
    cc = c - rc * n
    for j in range(k):
        if j == skip:
            continue
        d = tab[c, pts[j]]
        if stamp[d] == e2:
            continue  # line already walked
        m = mult[d]
        stamp[d] = e2
        dr = d // w - n
        dc = d % w - n
        for s in (1, -1):
            r = rc + s * dr
            col = cc + s * dc
            while 0 <= r < n and 0 <= col < n:
                x = r * n + col
                ac[x] += sign * (m - 1 if in_set[x] else m)
                r += s * dr
                col += s * dc


@njit
def _iso_rows(n, c, i, pts, k, cnt, sign):
    """isosceles: the point c in slot i joins (+1) or leaves (-1): update the distance
    counts of the other slots, and fill (clear) row i."""
    for j in range(k):
        if j == i:
            continue
        d = _dist(n, c, pts[j])
        cnt[j, d] += sign
        if sign > 0:
            cnt[i, d] += 1
        else:
            cnt[i, d] = 0


@njit
def _remove(kind, n, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc):
    """Take the point in slot i out of the structures (k slots occupied, i among them)."""
    p = pts[i]
    in_set[p] = 0
    if kind == KIND_DIST45:
        for t in range(tab[p, 0]):
            ac[tab[p, 1 + t]] -= 1
    elif kind == KIND_LINES:
        _walk_lines(n, p, pts, k, i, in_set, tab, ac, mult, stamp, sc, -1)
    else:
        _iso_rows(n, p, i, pts, k, cnt, -1)


@njit
def _place(kind, n, c, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc):
    """Put free cell c into slot i; k slots are occupied afterwards (i among them)."""
    if kind == KIND_DIST45:
        for t in range(tab[c, 0]):
            ac[tab[c, 1 + t]] += 1
    elif kind == KIND_LINES:
        _walk_lines(n, c, pts, k, i, in_set, tab, ac, mult, stamp, sc, 1)
    pts[i] = c
    if kind == KIND_ISOSCELES:
        _iso_rows(n, c, i, pts, k, cnt, 1)
    in_set[c] = 1


@njit
def _drop_slot(kind, n, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc):
    """Remove the point in slot i and close the gap with the last slot; returns k - 1."""
    last = k - 1
    if i != last:
        tmp = pts[i]
        pts[i] = pts[last]
        pts[last] = tmp
        if kind == KIND_ISOSCELES:  # rows of cnt belong to slots
            for d in range(cnt.shape[1]):
                t = cnt[i, d]
                cnt[i, d] = cnt[last, d]
                cnt[last, d] = t
    _remove(kind, n, last, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
    return last


@njit
def _record(pts, sc, best):
    if sc[V] == 0 and sc[K] > sc[BEST_K]:
        sc[BEST_K] = sc[K]
        for j in range(sc[K]):
            best[j] = pts[j]


@njit
def _load(kind, n, cells, pts, in_set, sc, best, tab, cnt, ac, mult, stamp, rng):
    """Load a start (any cells; at most pts.size are kept, chosen at random),
    repair it (drop the point in most violations, random ties) and record it."""
    cap = pts.shape[0]
    m = cells.shape[0]
    order = cells.copy()
    shuffle(order, rng)  # which points survive a cap is random
    k = 0
    v = 0
    for j in range(m):
        c = order[j]
        if k >= cap or in_set[c]:
            continue
        v += _add_delta(kind, n, c, -1, pts, k, tab, cnt, ac, mult, stamp, sc)
        _place(kind, n, c, k, pts, k + 1, in_set, tab, cnt, ac, mult, stamp, sc)
        k += 1
    saves = np.empty(max(k, 1), dtype=np.int64)
    while v > 0:
        for i in range(k):
            saves[i] = _add_delta(kind, n, pts[i], i, pts, k, tab, cnt, ac, mult, stamp, sc)
        wi, worst = argmax_random_tie(saves, k, rng)
        v -= worst
        k = _drop_slot(kind, n, wi, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
    sc[K] = k
    sc[V] = 0
    _record(pts, sc, best)


@njit
def _complete(kind, n, pts, in_set, sc, best, tab, cnt, ac, mult, stamp, rng):
    """Randomised greedy: visit the free cells in random order, add each that adds
    no violation. One pass gives a maximal valid set (conflicts only grow)."""
    N = n * n
    cap = pts.shape[0]
    order = np.arange(N)
    shuffle(order, rng)
    k = sc[K]
    for j in range(N):
        c = order[j]
        if in_set[c] or k >= cap:
            continue
        if _add_delta(kind, n, c, -1, pts, k, tab, cnt, ac, mult, stamp, sc) == 0:
            _place(kind, n, c, k, pts, k + 1, in_set, tab, cnt, ac, mult, stamp, sc)
            k += 1
    sc[K] = k
    _record(pts, sc, best)


@njit
def _anneal(kind, n, pts, in_set, sc, best, tab, cnt, ac, mult, stamp, rng, moves, target, prm):
    """Run up to `moves` swap proposals; returns how many were made (fewer when
    best_k reaches `target` or the set cannot grow)."""
    t_hi, t_lo, period, focus, line_moves, swap_moves = prm[0], prm[1], prm[2], prm[3], prm[4], prm[5]
    tour = int(prm[6])
    kick = int(prm[7])
    near_moves = prm[8]
    period_i = max(1, int(period))
    N = n * n
    cap = pts.shape[0]
    done = 0
    # isosceles: a slot found in a violation (and what removing it saves), kept while the
    # state is unchanged; finding one costs O(k) per try, and near a solution (V ~ 1-8,
    # a few of k points involved) the search below takes up to 4k tries per move
    held_i = -1
    held_rem = 0
    while done < moves:
        k = sc[K]
        if sc[V] == 0:
            held_i = -1
            _record(pts, sc, best)
            if sc[BEST_K] >= target or k >= cap or k >= N:
                break
            # grow by the free cell adding the fewest violations (random ties)
            bestd = 1 << 62
            choice = -1
            ties = 0
            for c in range(N):
                if in_set[c]:
                    continue
                d = _add_delta(kind, n, c, -1, pts, k, tab, cnt, ac, mult, stamp, sc)
                take, bestd, ties = tie_min(d, bestd, ties, rng)
                if take:
                    choice = c
            _place(kind, n, choice, k, pts, k + 1, in_set, tab, cnt, ac, mult, stamp, sc)
            sc[K] = k + 1
            sc[V] = bestd
            continue
        if k == 0:
            break
        if kick > 0 and sc[T] % period_i == 0:
            # start of a temperature cycle: relocate `kick` random points, whatever the cost
            held_i = -1
            for _ in range(kick):
                i = rand_int(rng, k)
                c = rand_int(rng, N)
                while in_set[c]:
                    c = rand_int(rng, N)
                sc[V] += (_add_delta(kind, n, c, i, pts, k, tab, cnt, ac, mult, stamp, sc)
                          - _add_delta(kind, n, pts[i], i, pts, k, tab, cnt, ac, mult, stamp, sc))
                _remove(kind, n, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
                _place(kind, n, c, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
        # the point to move: with probability `focus`, one in a violation
        i = rand_int(rng, k)
        rem = _add_delta(kind, n, pts[i], i, pts, k, tab, cnt, ac, mult, stamp, sc)
        if rem == 0 and rand_float(rng) < focus:
            if held_i >= 0:
                i = held_i
                rem = held_rem
            else:
                for _ in range(4 * k):
                    i = rand_int(rng, k)
                    rem = _add_delta(kind, n, pts[i], i, pts, k, tab, cnt, ac, mult, stamp, sc)
                    if rem > 0:
                        if kind == KIND_ISOSCELES:
                            held_i = i
                            held_rem = rem
                        break
        p = pts[i]
        T_now = temperature(sc[T], t_hi, t_lo, period)
        sc[T] += 1
        done += 1
        u = rand_float(rng)
        if u < swap_moves:
            # rook swap with another point j: (ri, ci), (rj, cj) -> (ri, cj), (rj, ci);
            # keeps every row and column count
            j = rand_int(rng, k)
            q = pts[j]
            ri = p // n
            ci = p - ri * n
            rj = q // n
            cj = q - rj * n
            c1 = ri * n + cj
            c2 = rj * n + ci
            if ri == rj or ci == cj or in_set[c1] or in_set[c2]:
                continue
            d = _add_delta(kind, n, c1, i, pts, k, tab, cnt, ac, mult, stamp, sc) - rem
            _remove(kind, n, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
            _place(kind, n, c1, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
            d += (_add_delta(kind, n, c2, j, pts, k, tab, cnt, ac, mult, stamp, sc)
                  - _add_delta(kind, n, q, j, pts, k, tab, cnt, ac, mult, stamp, sc))
            held_i = -1
            if d <= 0 or rand_float(rng) < math.exp(-d / T_now):
                _remove(kind, n, j, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
                _place(kind, n, c2, j, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
                sc[V] += d
            else:
                _remove(kind, n, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
                _place(kind, n, p, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
            continue
        if u < swap_moves + near_moves:
            # a step to a cell at most 2 rows and 2 columns away
            rp = p // n
            cp = p - rp * n
            r = rp + rand_int(rng, 5) - 2
            col = cp + rand_int(rng, 5) - 2
            if r < 0 or r >= n or col < 0 or col >= n:
                continue
            c = r * n + col
            if in_set[c]:
                continue
        elif u < swap_moves + near_moves + line_moves:
            # slide along the point's row or column: keeps the other line's count
            rp = p // n
            cp = p - rp * n
            c = p
            for _ in range(8):
                if rand_int(rng, 2) == 0:
                    c = rp * n + rand_int(rng, n)
                else:
                    c = rand_int(rng, n) * n + cp
                if not in_set[c]:
                    break
            if in_set[c]:
                continue
        else:
            c = rand_int(rng, N)
            while in_set[c]:
                c = rand_int(rng, N)
            if tour > 1:
                cost = _add_delta(kind, n, c, -1, pts, k, tab, cnt, ac, mult, stamp, sc)
                for _ in range(tour - 1):
                    x = rand_int(rng, N)
                    while in_set[x]:
                        x = rand_int(rng, N)
                    cx = _add_delta(kind, n, x, -1, pts, k, tab, cnt, ac, mult, stamp, sc)
                    if cx < cost:
                        cost = cx
                        c = x
        d = _add_delta(kind, n, c, i, pts, k, tab, cnt, ac, mult, stamp, sc) - rem
        if d <= 0 or rand_float(rng) < math.exp(-d / T_now):
            _remove(kind, n, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
            _place(kind, n, c, i, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
            sc[V] += d
            held_i = -1
    return done


@njit
def _direction_table(n):
    """tab[a, b] = id of the primitive direction from cell a to cell b, up to sign."""
    N = n * n
    w = 2 * n + 1
    tab = np.zeros((N, N), dtype=np.int32)
    for a in range(N):
        ra = a // n
        ca = a % n
        for b in range(N):
            if a == b:
                continue
            dr = b // n - ra
            dc = b % n - ca
            x = abs(dr)
            y = abs(dc)
            while y:
                x, y = y, x % y
            dr //= x
            dc //= x
            if dr < 0 or (dr == 0 and dc < 0):
                dr = -dr
                dc = -dc
            tab[a, b] = (dr + n) * w + dc + n
    return tab


def _neighbour_table(n: int, sq_dists: tuple[int, ...]) -> np.ndarray:
    """tab[c, 0] = number of cells at a forbidden squared distance from c; tab[c, 1:] = them."""
    offs = [(dr, dc) for dr in range(-n + 1, n) for dc in range(-n + 1, n) if dr * dr + dc * dc in sq_dists]
    tab = np.zeros((n * n, len(offs) + 1), dtype=np.int32)
    for c in range(n * n):
        r, col = divmod(c, n)
        nb = [(r + dr) * n + col + dc for dr, dc in offs if 0 <= r + dr < n and 0 <= col + dc < n]
        tab[c, 0] = len(nb)
        tab[c, 1:1 + len(nb)] = nb
    return tab


# ------------------------------------------------------------------ problem base
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
            from ._symmetry import orbit_table

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
        from ._symmetry import _sym_anneal, _sym_start

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
