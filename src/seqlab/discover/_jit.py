"""numba helpers shared by the search kernels: `njit` (cached) and a tiny RNG.

The kernels use their own xorshift64* generator whose whole state is one
uint64 in an array, so a search is reproducible from its seed no matter how
its moves are split into calls (the driver runs kernels in chunks to watch
the clock). Without numba the kernels still run, as plain (slow) Python.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit as _numba_njit

    HAVE_NUMBA = True

    def njit(fn):
        return _numba_njit(cache=True, nogil=True)(fn)
except ImportError:  # pragma: no cover - numba is a dependency; this keeps imports working
    HAVE_NUMBA = False

    def njit(fn):
        return fn


_MASK = (1 << 64) - 1


def rng_state(seed: int) -> np.ndarray:
    """A non-zero xorshift64* state from any int seed (splitmix64 of the seed)."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return np.array([z or 0x2545F4914F6CDD1D], dtype=np.uint64)


@njit
def rand_u64(rng):
    x = rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    rng[0] = x
    return x * np.uint64(2685821657736338717)


@njit
def rand_int(rng, m):
    """Uniform int in [0, m) (m >= 1; bias below 2**-40 for the m used here)."""
    return np.int64((rand_u64(rng) >> np.uint64(11)) % np.uint64(m))


@njit
def rand_float(rng):
    """Uniform float in [0, 1)."""
    return np.float64(rand_u64(rng) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit
def temperature(t, t_hi, t_lo, period):
    """Cyclic geometric schedule: from t_hi down to t_lo every `period` moves."""
    phase = (t % period) / period
    return t_hi * (t_lo / t_hi) ** phase


@njit
def argmax_random_tie(values, m, rng):
    """Index of the largest of values[:m], ties broken uniformly at random (one
    rand_int per tie, in order: reservoir sampling); returns (index, value)."""
    best = values[0]
    bi = 0
    ties = 1
    for i in range(1, m):
        r = values[i]
        if r > best:
            best = r
            bi = i
            ties = 1
        elif r == best:
            ties += 1
            if rand_int(rng, ties) == 0:
                bi = i
    return bi, best


@njit
def shuffle(a, rng):
    """Fisher-Yates shuffle of a in place (one rand_int per position, last to first)."""
    for j in range(a.shape[0] - 1, 0, -1):
        r = rand_int(rng, j + 1)
        t = a[j]
        a[j] = a[r]
        a[r] = t


@njit
def tie_min(d, best, ties, rng):
    """One step of a streaming argmin with uniform random ties (reservoir sampling):
    returns (take this candidate?, new best, new tie count); start with best = a
    large value and ties = 0. Draws one rand_int per tie, as argmax_random_tie."""
    if d < best:
        return True, d, 1
    if d == best:
        ties += 1
        return rand_int(rng, ties) == 0, best, ties
    return False, best, ties
