"""`c4-free`: simple graphs on n vertices with no 4-cycle as a subgraph (not
necessarily induced); maximise the number of edges. The maxima ex(n; C4) are
OEIS A006855. A graph has a 4-cycle iff two vertices have two common neighbours.

Construction: sorted int64 edge ids u * n + v with u < v (vertices 0..n-1).
Encoding: 2 characters per edge (u then v, value_alphabet(n)), edges sorted,
so m edges are 2m tokens. violations(c) = number of 4-cycles.

Search: like the grid problems (see `_grid.py`): annealing on the number of
4-cycles at a fixed edge count with swap moves (a random edge for a random
non-edge), growing by the best non-edge whenever the graph is C4-free. The
kernel keeps W[x, y] = number of common neighbours, so the 4-cycles through a
new edge uv are sum over x in N(u) of W[x, v]: O(degree) per move.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import SeqlabError
from .._jit import argmax_random_tie, njit, rand_float, rand_int, rng_state, shuffle, temperature, tie_min
from ..problem import as_rng
from ._base import Budget, KernelProblem, PairCodec, drive

M_, V, BEST_M, T = 0, 1, 2, 3


# ------------------------------------------------------------------ kernel
@njit
def _link(u, v, A, W, nbr, deg, pos):
    for t in range(deg[u]):
        x = nbr[u, t]
        W[x, v] += 1
        W[v, x] += 1
    for t in range(deg[v]):
        x = nbr[v, t]
        W[x, u] += 1
        W[u, x] += 1
    A[u, v] = 1
    A[v, u] = 1
    pos[u, v] = deg[u]
    nbr[u, deg[u]] = v
    deg[u] += 1
    pos[v, u] = deg[v]
    nbr[v, deg[v]] = u
    deg[v] += 1


@njit
def _drop_nbr(u, v, nbr, deg, pos):
    i = pos[u, v]
    last = nbr[u, deg[u] - 1]
    nbr[u, i] = last
    pos[u, last] = i
    deg[u] -= 1


@njit
def _unlink(u, v, A, W, nbr, deg, pos):
    _drop_nbr(u, v, nbr, deg, pos)
    _drop_nbr(v, u, nbr, deg, pos)
    A[u, v] = 0
    A[v, u] = 0
    for t in range(deg[u]):
        x = nbr[u, t]
        W[x, v] -= 1
        W[v, x] -= 1
    for t in range(deg[v]):
        x = nbr[v, t]
        W[x, u] -= 1
        W[u, x] -= 1


@njit
def _add_delta(u, v, W, nbr, deg):
    """4-cycles created by the new edge uv (u, v not adjacent): paths u-x-y-v."""
    s = 0
    for t in range(deg[u]):
        s += W[nbr[u, t], v]
    return s


@njit
def _rem_delta(a, b, W, nbr, deg):
    """4-cycles through the edge ab (a, b adjacent)."""
    s = 0
    for t in range(deg[a]):
        x = nbr[a, t]
        if x != b:
            s += W[x, b] - 1
    return s


@njit
def _record(n, eu, ev, sc, best):
    if sc[V] == 0 and sc[M_] > sc[BEST_M]:
        sc[BEST_M] = sc[M_]
        for i in range(sc[M_]):
            best[i] = eu[i] * n + ev[i]


@njit
def _load(n, edges, A, W, nbr, deg, pos, eu, ev, sc, best, rng):
    """Add the start's edges, then drop the edge in most 4-cycles (random ties) until none."""
    m = 0
    v = 0
    for e in edges:
        a = e // n
        b = e % n
        if a == b or A[a, b]:
            continue
        v += _add_delta(a, b, W, nbr, deg)
        _link(a, b, A, W, nbr, deg, pos)
        eu[m] = min(a, b)
        ev[m] = max(a, b)
        m += 1
    saves = np.empty(max(m, 1), dtype=np.int64)
    while v > 0:
        for i in range(m):
            saves[i] = _rem_delta(eu[i], ev[i], W, nbr, deg)
        wi, worst = argmax_random_tie(saves, m, rng)
        _unlink(eu[wi], ev[wi], A, W, nbr, deg, pos)
        v -= worst
        m -= 1
        eu[wi] = eu[m]
        ev[wi] = ev[m]
    sc[M_] = m
    sc[V] = 0
    _record(n, eu, ev, sc, best)


@njit
def _complete(n, A, W, nbr, deg, pos, eu, ev, sc, best, rng):
    """Randomised greedy: visit the non-edges in random order, add each that closes no 4-cycle."""
    P = n * (n - 1) // 2
    order = np.empty(P, dtype=np.int64)
    t = 0
    for u in range(n):
        for v in range(u + 1, n):
            order[t] = u * n + v
            t += 1
    shuffle(order, rng)
    m = sc[M_]
    for j in range(P):
        u = order[j] // n
        v = order[j] % n
        if A[u, v]:
            continue
        if _add_delta(u, v, W, nbr, deg) == 0:
            _link(u, v, A, W, nbr, deg, pos)
            eu[m] = u
            ev[m] = v
            m += 1
    sc[M_] = m
    _record(n, eu, ev, sc, best)


@njit
def _anneal(n, A, W, nbr, deg, pos, eu, ev, sc, best, rng, moves, target, t_hi, t_lo, period, focus):
    P = n * (n - 1) // 2
    done = 0
    while done < moves:
        m = sc[M_]
        if sc[V] == 0:
            _record(n, eu, ev, sc, best)
            if sc[BEST_M] >= target or m >= P:
                break
            bestd = 1 << 62
            cu = -1
            cv = -1
            ties = 0
            for u in range(n):
                for v in range(u + 1, n):
                    if A[u, v]:
                        continue
                    d = _add_delta(u, v, W, nbr, deg)
                    take, bestd, ties = tie_min(d, bestd, ties, rng)
                    if take:
                        cu = u
                        cv = v
            _link(cu, cv, A, W, nbr, deg, pos)
            eu[m] = cu
            ev[m] = cv
            sc[M_] = m + 1
            sc[V] = bestd
            continue
        if m == 0:
            break
        i = rand_int(rng, m)
        rem = _rem_delta(eu[i], ev[i], W, nbr, deg)
        if rem == 0 and rand_float(rng) < focus:
            for _ in range(4 * m):
                i = rand_int(rng, m)
                rem = _rem_delta(eu[i], ev[i], W, nbr, deg)
                if rem > 0:
                    break
        a = eu[i]
        b = ev[i]
        u = rand_int(rng, n)
        v = rand_int(rng, n)
        while u == v or A[u, v]:
            u = rand_int(rng, n)
            v = rand_int(rng, n)
        _unlink(a, b, A, W, nbr, deg, pos)
        d = _add_delta(u, v, W, nbr, deg) - rem
        if d <= 0 or rand_float(rng) < math.exp(-d / temperature(sc[T], t_hi, t_lo, period)):
            _link(u, v, A, W, nbr, deg, pos)
            eu[i] = min(u, v)
            ev[i] = max(u, v)
            sc[V] += d
        else:
            _link(a, b, A, W, nbr, deg, pos)
        sc[T] += 1
        done += 1
    return done


# ------------------------------------------------------------------ problem
class C4Free(PairCodec, KernelProblem):
    name = "c4-free"
    description = "graphs on n vertices with no 4-cycle; maximise edges (ex(n;C4), OEIS A006855)"
    min_n = 1
    max_n = 400
    t_hi, t_lo, period, focus = 1.0, 0.1, 100_000, 0.5
    # OEIS A006855 (http://oeis.org/A006855), n = 1..40; the same 40 values are in the
    # docstring of PatternBoost's problem_4_cycle_free.jl. n = 41..49 are lower bounds
    # (McKay 2022, "good chance of being exact"), not listed here.
    best_known_table = dict(enumerate(
        [0, 1, 3, 4, 6, 7, 9, 11, 13, 16, 18, 21, 24, 27, 30, 33, 36, 39, 42, 46,
         50, 52, 56, 59, 63, 67, 71, 76, 80, 85, 90, 92, 96, 102, 106, 110, 113, 117, 122, 127], start=1))

    def __init__(self, n: int):
        super().__init__(n)
        self._init_codec(n)

    # ---------------------------------------------------------- encoding
    def decode(self, s: str):
        uv = self._decode_pairs(s)
        if uv is None:
            return None
        if not len(uv):
            return np.zeros(0, dtype=np.int64)
        uv = uv[uv[:, 0] != uv[:, 1]]
        if not len(uv):
            return None
        return np.unique(uv.min(axis=1) * self.n + uv.max(axis=1))

    def from_edges(self, edges) -> np.ndarray:
        e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        if e.size and (e.min() < 0 or e.max() >= self.n or np.any(e[:, 0] == e[:, 1])):
            raise SeqlabError(f"problem '{self.name}': bad edge for n={self.n} (loop or vertex out of range)")
        return np.unique(e.min(axis=1) * self.n + e.max(axis=1))

    def edges(self, c) -> np.ndarray:
        c = np.asarray(c, dtype=np.int64)
        return np.stack([c // self.n, c % self.n], axis=1)

    def adjacency(self, c) -> np.ndarray:
        A = np.zeros((self.n, self.n), dtype=np.int64)
        e = self.edges(c)
        A[e[:, 0], e[:, 1]] = 1
        A[e[:, 1], e[:, 0]] = 1
        return A

    # ---------------------------------------------------------- scoring
    def score(self, c) -> float:
        return float(len(c))

    def violations(self, c) -> int:
        A = self.adjacency(c)
        W = A @ A
        np.fill_diagonal(W, 0)
        return int((W * (W - 1) // 2).sum() // 4)  # each 4-cycle has 2 diagonals, W counts both orders

    def is_valid(self, c) -> bool:
        c = np.asarray(c)
        if c.ndim != 1 or (c.size and (c.min() < 0 or c.max() >= self.n * self.n)):
            return False
        if not np.all(np.diff(c) > 0) or np.any(c // self.n >= c % self.n):
            return False
        return self.violations(c) == 0

    # ---------------------------------------------------------- search
    def _state(self, seed):
        n = self.n
        P = max(1, n * (n - 1) // 2)
        return dict(A=np.zeros((n, n), dtype=np.uint8), W=np.zeros((n, n), dtype=np.int64),
                    nbr=np.zeros((n, n), dtype=np.int64), deg=np.zeros(n, dtype=np.int64),
                    pos=np.zeros((n, n), dtype=np.int64), eu=np.zeros(P, dtype=np.int64),
                    ev=np.zeros(P, dtype=np.int64), sc=np.zeros(4, dtype=np.int64),
                    best=np.zeros(P, dtype=np.int64), rng=rng_state(seed))

    def _run_one(self, start, seed, budget: Budget, target: float):
        s = self._state(seed)
        g = (s["A"], s["W"], s["nbr"], s["deg"], s["pos"], s["eu"], s["ev"], s["sc"], s["best"], s["rng"])
        edges = np.zeros(0, dtype=np.int64) if start is None else np.asarray(start, dtype=np.int64).ravel()
        edges = edges[(edges >= 0) & (edges < self.n * self.n)]
        _load(self.n, edges, *g)
        _complete(self.n, *g)
        tgt = 1 << 62 if target >= 1 << 62 else int(math.ceil(target))
        drive(budget, lambda step: _anneal(self.n, *g, step, tgt, self.t_hi, self.t_lo, self.period, self.focus))
        sc = s["sc"]
        return np.sort(s["best"][: sc[BEST_M]]), int(sc[T])

    def repair(self, c, rng=None):
        """Drop the edge in most 4-cycles (random ties) until none is left."""
        s = self._state(int(as_rng(rng).integers(0, 2**62)))
        edges = np.asarray(c, dtype=np.int64).ravel()
        edges = np.unique(edges[(edges >= 0) & (edges < self.n * self.n)])
        _load(self.n, edges, s["A"], s["W"], s["nbr"], s["deg"], s["pos"], s["eu"], s["ev"], s["sc"], s["best"],
              s["rng"])
        m = s["sc"][M_]
        return np.sort(s["eu"][:m] * self.n + s["ev"][:m])

    # ---------------------------------------------------------- views
    def pretty(self, c) -> str:
        A = self.adjacency(c)
        return "\n".join(f"{u}: " + " ".join(str(v) for v in np.flatnonzero(A[u])) for u in range(self.n))

    def draw(self, c, path) -> None:
        from ...atomic import atomic_path
        from ...plots import _plt

        plt = _plt()
        n = self.n
        ang = 2 * np.pi * np.arange(n) / max(n, 1)
        x, y = np.cos(ang), np.sin(ang)
        fig, ax = plt.subplots(figsize=(6, 6))
        for u, v in self.edges(c):
            ax.plot([x[u], x[v]], [y[u], y[v]], color="tab:blue", lw=0.8, alpha=0.7)
        ax.scatter(x, y, s=30, color="tab:red", zorder=3)
        if n <= 40:
            for i in range(n):
                ax.annotate(str(i), (1.08 * x[i], 1.08 * y[i]), ha="center", va="center", fontsize=7)
        ax.set_aspect("equal")
        ax.axis("off")
        bk = self.best_known(n)
        ax.set_title(f"{self.name} n={n}: {len(c)} edges" + (f" (best known {bk:g})" if bk is not None else ""))
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
