"""`golomb`: Golomb rulers with n marks (all pairwise differences distinct);
minimise the length. score = -length, so higher is better. Optimal lengths are
OEIS A003022.

Construction: sorted int64 marks starting at 0, exactly n of them for a
valid ruler. Encoding: the n - 1 gaps between consecutive marks, one
character each (gap g is value_alphabet(...)[g], so 1..9 are digits); decode
keeps the first n marks. violations(c) = pairs of equal differences + |#marks - n|.

Repair keeps n marks: it drops or adds marks to reach n, then moves the mark
in most repeated differences to the position adding the fewest (the smallest
such position, possibly beyond the end, so the ruler may get longer) until all
differences are distinct.

Search: annealing on the number of repeated-difference pairs at a fixed
length L (marks 0 and L stay; a move puts an inner mark on a free position);
each time the ruler is valid it is recorded and shortened by one (a random
gap of size >= 2 shrinks by one). A run from scratch starts from a randomised
greedy ruler.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import SeqlabError
from .._jit import argmax_random_tie, njit, rand_float, rand_int, rng_state, temperature
from ..problem import as_rng, value_alphabet, value_index
from ._base import Budget, KernelProblem, drive

L_, V, BEST_L, T = 0, 1, 2, 3


# ------------------------------------------------------------------ kernel
@njit
def _count(marks, k, cnt):
    """Fill cnt with the difference multiplicities of marks[:k]; return the repeated pairs."""
    cnt[:] = 0
    v = 0
    for i in range(k):
        for j in range(i + 1, k):
            d = abs(marks[i] - marks[j])
            v += cnt[d]
            cnt[d] += 1
    return v


@njit
def _mark_conflicts(marks, k, i, cnt):
    """How much the mark in slot i is involved in repeated differences (0 iff not at all)."""
    s = 0
    for j in range(k):
        if j != i:
            s += cnt[abs(marks[i] - marks[j])] - 1
    return s


@njit
def _best_position(marks, k, skip, lo, hi, occ, cnt):
    """Smallest free x in [lo, hi] adding the fewest repeated pairs against marks[:k] minus slot skip."""
    best = 1 << 62
    bx = -1
    for x in range(lo, hi + 1):
        if occ[x]:
            continue
        v = 0
        for j in range(k):
            if j != skip:
                d = abs(x - marks[j])
                v += cnt[d]
                cnt[d] += 1
        for j in range(k):
            if j != skip:
                cnt[abs(x - marks[j])] -= 1
        if v < best:
            best = v
            bx = x
            if v == 0:
                break
    return bx


@njit
def _grown(a, size):
    b = np.zeros(size, dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@njit
def _repair(n, marks, rng):
    """A valid n-mark ruler from any sorted distinct non-negative marks (see module doc)."""
    k = marks.shape[0]
    cap = 4 * (int(marks.max()) + 2 if k else 2) + 8 * n * n + 16
    work = np.zeros(max(n, k) + 1, dtype=np.int64)
    conflicts = np.zeros(work.shape[0], dtype=np.int64)
    for i in range(k):
        work[i] = marks[i] - marks[0]
    if k == 0:
        k = 1
    occ = np.zeros(cap, dtype=np.uint8)
    cnt = np.zeros(cap, dtype=np.int64)
    for i in range(k):
        occ[work[i]] = 1
    v = _count(work, k, cnt)
    while k > n:  # drop the mark in most repeated differences (random ties)
        for i in range(k):
            conflicts[i] = _mark_conflicts(work, k, i, cnt)
        wi, worst = argmax_random_tie(conflicts, k, rng)
        occ[work[wi]] = 0
        work[wi] = work[k - 1]
        k -= 1
        v = _count(work, k, cnt)
    while k < n:  # add marks where they repeat the fewest differences
        L = 0
        for i in range(k):
            L = max(L, work[i])
        if 2 * L + 2 > occ.shape[0]:
            occ = _grown(occ, 4 * L + 4)
            cnt = _grown(cnt, 4 * L + 4)
        x = _best_position(work, k, -1, 1, 2 * L + 1, occ, cnt)
        work[k] = x
        occ[x] = 1
        k += 1
        v = _count(work, k, cnt)
    while v > 0:  # move the mark in most repeated differences to its best position
        for i in range(k):
            conflicts[i] = _mark_conflicts(work, k, i, cnt)
        wi, worst = argmax_random_tie(conflicts, k, rng)
        L = 0
        for i in range(k):
            if i != wi:
                L = max(L, work[i])
        if 2 * L + 2 > occ.shape[0]:
            occ = _grown(occ, 4 * L + 4)
            cnt = _grown(cnt, 4 * L + 4)
        occ[work[wi]] = 0
        for i in range(k):  # remove the mark's differences
            if i != wi:
                cnt[abs(work[wi] - work[i])] -= 1
        x = _best_position(work, k, wi, 0, 2 * L + 1, occ, cnt)
        work[wi] = x
        occ[x] = 1
        v = _count(work, k, cnt)
        lo = work[:k].min()  # keep the first mark at 0
        if lo:
            for i in range(k):
                occ[work[i]] = 0
                work[i] -= lo
            for i in range(k):
                occ[work[i]] = 1
    out = np.sort(work[:k])
    return out - out[0]


@njit
def _greedy(n, rng, p_skip):
    """Randomised greedy ruler: scan x = 1, 2, ... and take x when all its differences
    are new, unless a coin (probability p_skip) says skip."""
    marks = np.zeros(n, dtype=np.int64)
    cap = 16 * n * n * n + 16
    cnt = np.zeros(cap, dtype=np.uint8)
    k = 1
    x = 0
    while k < n:
        x += 1
        ok = True
        for j in range(k):
            if cnt[x - marks[j]]:
                ok = False
                break
        if not ok or rand_float(rng) < p_skip:
            continue
        for j in range(k):
            cnt[x - marks[j]] = 1
        marks[k] = x
        k += 1
    return marks


@njit
def _setup(marks, n, occ, cnt, sc):
    """Slots: 0 holds mark 0, 1 holds the last mark L, 2.. the inner marks."""
    s = np.sort(marks)
    marks[0] = s[0]
    marks[1] = s[n - 1]
    for i in range(1, n - 1):
        marks[i + 1] = s[i]
    occ[:] = 0
    for i in range(n):
        occ[marks[i]] = 1
    sc[L_] = s[n - 1]
    sc[V] = _count(marks, n, cnt)


@njit
def _anneal(n, marks, occ, cnt, sc, best, rng, moves, target, t_hi, t_lo, period, focus):
    """target: stop once best length <= target."""
    done = 0
    while done < moves:
        L = sc[L_]
        if sc[V] == 0:
            if L < sc[BEST_L]:
                sc[BEST_L] = L
                best[:] = np.sort(marks)
            if L <= target or L <= n * (n - 1) // 2 or n < 3:
                break
            # shorten: a random gap of size >= 2 loses one unit
            s = np.sort(marks)
            g = rand_int(rng, n - 1)
            while s[g + 1] - s[g] < 2:
                g = rand_int(rng, n - 1)
            for i in range(g + 1, n):
                s[i] -= 1
            marks[:] = s
            _setup(marks, n, occ, cnt, sc)
            continue
        i = 2 + rand_int(rng, n - 2)
        rem = _mark_conflicts(marks, n, i, cnt)
        if rem == 0 and rand_float(rng) < focus:
            for _ in range(4 * n):
                i = 2 + rand_int(rng, n - 2)
                rem = _mark_conflicts(marks, n, i, cnt)
                if rem > 0:
                    break
        x = 1 + rand_int(rng, L - 1)
        while occ[x]:
            x = 1 + rand_int(rng, L - 1)
        m = marks[i]
        rem = 0  # exact (sequential: two equal differences of m count 2c - 3, not 2c - 2)
        for j in range(n):
            if j != i:
                d = abs(m - marks[j])
                cnt[d] -= 1
                rem += cnt[d]
        add = 0
        for j in range(n):
            if j != i:
                d = abs(x - marks[j])
                add += cnt[d]
                cnt[d] += 1
        d = add - rem
        if d <= 0 or rand_float(rng) < math.exp(-d / temperature(sc[T], t_hi, t_lo, period)):
            occ[m] = 0
            occ[x] = 1
            marks[i] = x
            sc[V] += d
        else:
            for j in range(n):
                if j != i:
                    cnt[abs(x - marks[j])] -= 1
                    cnt[abs(m - marks[j])] += 1
        sc[T] += 1
        done += 1
    return done


# ------------------------------------------------------------------ problem
class Golomb(KernelProblem):
    name = "golomb"
    description = "Golomb rulers with n marks (distinct differences); minimise length (score = -length)"
    min_n = 1
    max_n = 40
    t_hi, t_lo, period, focus = 1.0, 0.1, 100_000, 0.5
    # OEIS A003022 (optimal Golomb rulers; n=24..28 settled by distributed.net OGR):
    # n = 1..28 -> length 0, 1, 3, 6, 11, 17, 25, 34, 44, 55, 72, 85, 106, 127, ...
    best_known_table = {n: -float(v) for n, v in enumerate(
        [0, 1, 3, 6, 11, 17, 25, 34, 44, 55, 72, 85, 106, 127, 151, 177, 199, 216, 246, 283,
         333, 356, 372, 425, 480, 492, 553, 585], start=1)}

    def __init__(self, n: int):
        super().__init__(n)
        self.max_gap = max(8, 2 * n * n)
        self._alpha = value_alphabet(self.max_gap + 1)
        self._index = {ch: i for i, ch in enumerate(self._alpha)}

    # ---------------------------------------------------------- encoding
    def vocabulary(self) -> str:
        """Gaps 1..max_gap (2n^2: far longer than any ruler a search keeps). A longer gap,
        which only a user-given start can hold, is written with the next letters of
        the same alphabet, so every valid ruler still round-trips."""
        return self._alpha[1:]

    def encode(self, c) -> str:
        g = np.diff(np.asarray(c, dtype=np.int64))
        if g.size and g.min() < 1:
            raise SeqlabError("problem 'golomb': marks must be strictly increasing")
        alpha = self._alpha if not g.size or g.max() <= self.max_gap else value_alphabet(int(g.max()) + 1)
        return "".join(alpha[int(x)] for x in g)

    def decode(self, s: str):
        gaps = []
        for ch in s:
            g = self._index.get(ch)
            if g is None:
                g = value_index(ch)
            if g:  # drops unknown characters and the gap 0
                gaps.append(g)
        if s and not gaps:
            return None
        return np.concatenate([[0], np.cumsum(gaps[: self.n - 1], dtype=np.int64)]).astype(np.int64)

    def from_marks(self, marks) -> np.ndarray:
        m = np.unique(np.asarray(marks, dtype=np.int64))
        return m - m[0] if m.size else np.zeros(1, dtype=np.int64)

    # ---------------------------------------------------------- scoring
    def score(self, c) -> float:
        c = np.asarray(c)
        return -float(c.max() - c.min()) if c.size else 0.0

    def violations(self, c) -> int:
        c = np.asarray(c, dtype=np.int64)
        d = np.abs(c[:, None] - c[None, :])[np.triu_indices(len(c), 1)]
        _, counts = np.unique(d, return_counts=True)
        return int((counts * (counts - 1) // 2).sum()) + abs(len(c) - self.n)

    def is_valid(self, c) -> bool:
        c = np.asarray(c)
        if c.ndim != 1 or len(c) != self.n or c[0] != 0 or not np.all(np.diff(c) > 0):
            return False
        return self.violations(c) == 0

    # ---------------------------------------------------------- search
    def repair(self, c, rng=None):
        rng = as_rng(rng)
        marks = np.unique(np.asarray(c, dtype=np.int64).ravel()) if c is not None else np.zeros(0, np.int64)
        marks = marks[marks >= 0]
        return _repair(self.n, marks, rng_state(int(rng.integers(0, 2**62))))

    def _target(self, target):
        return -1 if target is None else math.floor(-target)  # a length

    def _run_one(self, start, seed, budget: Budget, target: int):
        n = self.n
        rng = rng_state(seed)
        if start is None:
            marks = _greedy(n, rng, 0.3)
        else:
            marks = np.unique(np.asarray(start, dtype=np.int64).ravel())
            marks = _repair(n, marks[marks >= 0], rng)
        if n < 3:
            return marks, 0
        L = int(marks[-1])
        occ = np.zeros(L + 1, dtype=np.uint8)
        cnt = np.zeros(L + 1, dtype=np.int64)
        sc = np.zeros(4, dtype=np.int64)
        best = marks.copy()
        work = marks.copy()
        _setup(work, n, occ, cnt, sc)
        sc[BEST_L] = L + 1
        drive(budget, lambda step: _anneal(n, work, occ, cnt, sc, best, rng, step, int(target), self.t_hi,
                                           self.t_lo, self.period, self.focus))
        return best, int(sc[T])

    def random_construction(self, rng=None):
        """A randomised greedy ruler (valid, usually far from optimal)."""
        return _greedy(self.n, rng_state(int(as_rng(rng).integers(0, 2**62))), 0.3)

    # ---------------------------------------------------------- views
    def symmetries(self, c) -> list:
        c = np.asarray(c, dtype=np.int64)
        return [c, np.sort(c[-1] - c)] if c.size else [c]

    def pretty(self, c) -> str:
        c = np.asarray(c)
        return f"marks {' '.join(map(str, c))}  (length {int(c[-1]) if c.size else 0})"

    def draw(self, c, path) -> None:
        from ...atomic import atomic_path
        from ...plots import _plt

        plt = _plt()
        c = np.asarray(c)
        L = int(c[-1]) if c.size else 0
        fig, ax = plt.subplots(figsize=(8, 1.8))
        ax.hlines(0, 0, max(L, 1), color="0.3", lw=2)
        ax.vlines(c, -0.3, 0.3, color="tab:red", lw=2)
        for a, b in zip(c[:-1], c[1:]):
            ax.annotate(str(int(b - a)), ((a + b) / 2, 0.35), ha="center", fontsize=8)
        for x in c:
            ax.annotate(str(int(x)), (x, -0.55), ha="center", fontsize=7)
        ax.set_ylim(-0.9, 0.8)
        ax.axis("off")
        bk = self.best_known(self.n)
        ax.set_title(f"golomb n={self.n}: length {L}" + (f" (optimal {-bk:g})" if bk is not None else ""))
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
