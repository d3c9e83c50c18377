"""Annealing restricted to point sets of the n x n grid that a symmetry group of the
square maps to themselves: the grid problems' "symmetric restarts".

Why: the best sets of these problems are often symmetric (no-three-in-line's 2n
solutions for large n were found in symmetry classes, Flammenkamp 1992/98;
AlphaEvolve's isosceles-free sets are nearly 4-fold symmetric), and a
symmetric set has 2-8 times fewer free choices. On isosceles-free n = 18 the
unrestricted annealer stalls at 31 points for billions of moves, while the set
of 32 that a SAT solver finds is symmetric under both diagonal reflections and
annealing over that group's orbits reaches 32 in about a second.

A group is named by its generators (`GROUPS`); its orbits partition the cells.
The search state is a set of whole orbits: a move takes a chosen orbit to a
free one (all its cells free), scored exactly by the grid kernel's own
incremental updates (`_add_delta`, `_place`, `_remove`) applied cell by cell;
the Metropolis threshold is drawn first, so a move is rejected as soon as the
violations it adds pass it (adding a cell never removes violations). As in
the unrestricted kernel, each time the set is valid it is recorded and grows by
the free orbit adding the fewest violations. Orbits that are invalid on their
own (e.g. the four corners of a square, always isosceles) are never used.
"""

from __future__ import annotations

import math

import numpy as np

from .._jit import njit, rand_float, rand_int, shuffle, temperature, tie_min
from ._grid_kernel import BEST_K, K, KIND_ISOSCELES, T, V, _add_delta, _place, _record, _remove

# generators as maps (r, c) -> (r', c') on an n x n grid with m = n - 1
GROUPS = {
    "rot180": ("rot180",),
    "rot90": ("rot90",),
    "mirror": ("mirror",),             # left-right reflection
    "diag": ("diag",),                 # reflection in the main diagonal
    "d2": ("mirror", "flip"),          # both axis reflections
    "diag2": ("diag", "antidiag"),     # both diagonal reflections
    "d4": ("rot90", "mirror"),         # the whole symmetry group of the square
}


def _apply(g: str, r: int, c: int, m: int) -> tuple[int, int]:
    return {"rot180": (m - r, m - c), "rot90": (c, m - r), "mirror": (r, m - c), "flip": (m - r, c),
            "diag": (c, r), "antidiag": (m - c, m - r)}[g]


def orbit_table(n: int, group: str) -> np.ndarray:
    """(orbits, 8) int64: the cells of each orbit of `group`, padded with -1."""
    gens = GROUPS[group]
    N, m = n * n, n - 1
    seen = np.zeros(N, dtype=bool)
    rows = []
    for x in range(N):
        if seen[x]:
            continue
        orb, stack = {x}, [x]
        while stack:
            r, c = divmod(stack.pop(), n)
            for g in gens:
                rr, cc = _apply(g, r, c, m)
                y = rr * n + cc
                if y not in orb:
                    orb.add(y)
                    stack.append(y)
        seen[list(orb)] = True
        rows.append(sorted(orb) + [-1] * (8 - len(orb)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 8)


# ------------------------------------------------------------------ kernel
@njit
def _slot_of(pts, k, x):
    for j in range(k):
        if pts[j] == x:
            return j
    return -1


@njit
def _orbit_size(orb, o):
    s = 0
    while s < 8 and orb[o, s] >= 0:
        s += 1
    return s


@njit
def _orbit_free(orb, o, in_set):
    for t in range(8):
        c = orb[o, t]
        if c < 0:
            break
        if in_set[c]:
            return False
    return True


@njit
def _add_cell(kind, n, c, pts, in_set, tab, cnt, ac, mult, stamp, sc):
    """Add free cell c in a new slot; returns the violations it adds."""
    k = sc[K]
    d = _add_delta(kind, n, c, -1, pts, k, tab, cnt, ac, mult, stamp, sc)
    _place(kind, n, c, k, pts, k + 1, in_set, tab, cnt, ac, mult, stamp, sc)
    sc[K] = k + 1
    return d


@njit
def _place_cells(kind, n, orb, o, upto, pts, in_set, tab, cnt, ac, mult, stamp, sc):
    """Add the first `upto` cells of orbit o (all free); returns the violations added."""
    d = 0
    for t in range(upto):
        d += _add_cell(kind, n, orb[o, t], pts, in_set, tab, cnt, ac, mult, stamp, sc)
    return d


@njit
def _drop_cells(kind, n, orb, o, upto, pts, in_set, tab, cnt, ac, mult, stamp, sc):
    """Remove the first `upto` cells of orbit o (all chosen); returns the violations removed."""
    d = 0
    for t in range(upto):
        c = orb[o, t]
        k = sc[K]
        i = _slot_of(pts, k, c)
        d += _add_delta(kind, n, c, i, pts, k, tab, cnt, ac, mult, stamp, sc)
        last = k - 1
        if i != last:  # move the last slot into i (isosceles: its row of cnt too)
            pts[i] = pts[last]
            pts[last] = c
            if kind == KIND_ISOSCELES:
                for x in range(cnt.shape[1]):
                    tmp = cnt[i, x]
                    cnt[i, x] = cnt[last, x]
                    cnt[last, x] = tmp
        _remove(kind, n, last, pts, k, in_set, tab, cnt, ac, mult, stamp, sc)
        sc[K] = last
    return d


@njit
def _sym_start(kind, n, orb, chosen, pts, in_set, sc, best, tab, cnt, ac, mult, stamp, rng):
    """Randomised greedy over orbits: visit them in random order, add each that fits
    and adds no violation. chosen[0] = number of chosen orbits, chosen[1:] = them."""
    no = orb.shape[0]
    cap = pts.shape[0]
    order = np.arange(no)
    shuffle(order, rng)
    chosen[0] = 0
    for j in range(no):
        o = order[j]
        s = _orbit_size(orb, o)
        if sc[K] + s > cap or not _orbit_free(orb, o, in_set):
            continue
        if _place_cells(kind, n, orb, o, s, pts, in_set, tab, cnt, ac, mult, stamp, sc) == 0:
            chosen[0] += 1
            chosen[chosen[0]] = o
        else:
            _drop_cells(kind, n, orb, o, s, pts, in_set, tab, cnt, ac, mult, stamp, sc)
    sc[V] = 0
    _record(pts, sc, best)


@njit
def _sym_anneal(kind, n, orb, chosen, pts, in_set, sc, best, tab, cnt, ac, mult, stamp, rng, moves, target,
                t_hi, t_lo, period):
    """Up to `moves` orbit moves; returns how many were made (fewer when best_k
    reaches `target` or no orbit can be added)."""
    no = orb.shape[0]
    cap = pts.shape[0]
    done = 0
    while done < moves:
        if sc[V] == 0:
            _record(pts, sc, best)
            if sc[BEST_K] >= target:
                break
            bestd = 1 << 62
            choice = -1
            ties = 0
            for o in range(no):
                s = _orbit_size(orb, o)
                if sc[K] + s > cap or not _orbit_free(orb, o, in_set):
                    continue
                d = _place_cells(kind, n, orb, o, s, pts, in_set, tab, cnt, ac, mult, stamp, sc)
                _drop_cells(kind, n, orb, o, s, pts, in_set, tab, cnt, ac, mult, stamp, sc)
                take, bestd, ties = tie_min(d, bestd, ties, rng)
                if take:
                    choice = o
            if choice < 0:
                break
            sc[V] += _place_cells(kind, n, orb, choice, _orbit_size(orb, choice), pts, in_set, tab, cnt, ac, mult,
                                  stamp, sc)
            chosen[0] += 1
            chosen[chosen[0]] = choice
            continue
        if chosen[0] >= no:
            break  # every orbit is in the set: nowhere to move (tiny grids)
        a = 1 + rand_int(rng, chosen[0])
        oa = chosen[a]
        ob = rand_int(rng, no)
        while not _orbit_free(orb, ob, in_set):
            ob = rand_int(rng, no)
        sc[T] += 1
        done += 1
        sa = _orbit_size(orb, oa)
        sb = _orbit_size(orb, ob)
        if sc[K] - sa + sb > cap:
            continue
        # accept iff d <= -T ln u (u uniform): the Metropolis rule with the draw made first
        u = rand_float(rng)
        thr = math.inf if u <= 0.0 else -temperature(sc[T], t_hi, t_lo, period) * math.log(u)
        d = -_drop_cells(kind, n, orb, oa, sa, pts, in_set, tab, cnt, ac, mult, stamp, sc)
        placed = 0
        while placed < sb and d <= thr:
            d += _add_cell(kind, n, orb[ob, placed], pts, in_set, tab, cnt, ac, mult, stamp, sc)
            placed += 1
        if d <= thr:
            sc[V] += d
            chosen[a] = ob
        else:
            _drop_cells(kind, n, orb, ob, placed, pts, in_set, tab, cnt, ac, mult, stamp, sc)
            _place_cells(kind, n, orb, oa, sa, pts, in_set, tab, cnt, ac, mult, stamp, sc)
    return done
