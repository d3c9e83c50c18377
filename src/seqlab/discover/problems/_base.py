"""What the built-in problems share: `local_search` around a numba annealing kernel
that runs in chunks of moves, so that the clock and a stop flag are checked
between chunks without changing the moves made (the kernel's RNG state lives
in an array, so a run split into chunks equals the same run in one piece)."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from ..problem import Problem, as_rng, derive_seed, value_alphabet


class PairCodec:
    """Constructions whose elements are ids a * n + b (grid cells: row, column; edges:
    u, v), written as two characters each over value_alphabet(n)."""

    def _init_codec(self, n: int) -> None:
        self._alpha = value_alphabet(n)
        self._index = {ch: i for i, ch in enumerate(self._alpha)}

    def vocabulary(self) -> str:
        return self._alpha

    def encode(self, c) -> str:
        a, n = self._alpha, self.n
        return "".join(a[int(x) // n] + a[int(x) % n] for x in np.asarray(c))

    def _decode_pairs(self, s: str):
        """(m, 2) int64 pairs from the usable characters of s (an odd last one is dropped);
        None when fewer than two are usable, unless s is empty (the empty construction)."""
        vals = [self._index[ch] for ch in s if ch in self._index]
        if len(vals) < 2:
            return None if s else np.zeros((0, 2), dtype=np.int64)
        return np.asarray(vals[: len(vals) // 2 * 2], dtype=np.int64).reshape(-1, 2)


CHUNK = 1 << 16  # moves per kernel call when a clock or a stop flag is watched


class Budget:
    """Moves left for one start, plus the call's deadline and stop flag."""

    def __init__(self, moves: int, deadline: float | None, stop: Callable[[], bool] | None):
        self.left = int(moves)
        self.deadline = deadline
        self.stop = stop

    def chunks(self):
        """Yield move counts until the budget, the deadline or the stop flag says no;
        the caller sends back how many moves were actually made (fewer: finished)."""
        watched = self.deadline is not None or self.stop is not None
        while self.left > 0:
            if self.deadline is not None and time.perf_counter() >= self.deadline:
                return
            if self.stop is not None and self.stop():
                return
            step = min(CHUNK, self.left) if watched else self.left
            done = yield step
            self.left -= step
            if done is not None and done < step:
                return


class KernelProblem(Problem):
    """A problem whose local search is `_run_one(start, seed, budget, target)`."""

    # cyclic annealing schedule: t_hi down to t_lo every `period` moves; `focus` is the
    # probability that a move takes an element that is in a violation
    t_hi, t_lo, period, focus = 1.0, 0.1, 100_000, 0.5
    default_moves = 200_000

    def _run_one(self, start, seed: int, budget: Budget, target: float):
        raise NotImplementedError

    def _target(self, target: float | None) -> float:
        return math.inf if target is None else target

    def local_search(self, starts=None, seed=0, max_moves=None, seconds=None, target=None,
                     stop: Callable[[], bool] | None = None) -> list:
        """Improve each start (None: one run from scratch): repair, complete greedily,
        then anneal. Every result is valid. `max_moves`: proposals per start (default
        `default_moves`; unlimited when only `seconds` is given); `seconds`: deadline
        for the whole call; `target`: stop a start once its score >= target; `stop`:
        a callable checked between chunks of moves. Start i is seeded from (seed, i).
        `self.last_moves` is the number of moves made."""
        starts = [None] if starts is None else list(starts)
        if max_moves is None:
            max_moves = (1 << 62) if seconds is not None else self.default_moves
        deadline = None if seconds is None else time.perf_counter() + float(seconds)
        tgt = self._target(target)
        self.last_moves = 0
        out = []
        for i, st in enumerate(starts):
            c, moves = self._run_one(st, derive_seed(seed, i), Budget(max_moves, deadline, stop), tgt)
            self.last_moves += moves
            out.append(c)
        return out

    def random_construction(self, rng=None):
        """A randomised greedy construction (valid; no annealing)."""
        return self.local_search(None, seed=int(as_rng(rng).integers(0, 2**62)), max_moves=0)[0]


def drive(budget: Budget, run_chunk: Callable[[int], int]) -> None:
    """Feed `run_chunk(moves) -> moves made` with the budget's chunks."""
    gen = budget.chunks()
    try:
        step = next(gen)
        while True:
            step = gen.send(run_chunk(step))
    except StopIteration:
        pass
