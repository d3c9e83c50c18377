"""The simulated-annealing kernel of the grid point-set problems (`_grid.py`).

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

import numpy as np

from .._jit import argmax_random_tie, njit, rand_float, rand_int, shuffle, temperature, tie_min

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
