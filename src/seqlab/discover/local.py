"""The `local` searcher and the batch improver the PatternBoost loop calls.

    run_local(problem, seconds, seed, workers, pool_out=None, ...) -> LocalResult
        rounds of annealing runs in a process pool: every round each job either
        restarts from scratch (randomised greedy + annealing) or continues from
        one of the best constructions so far; the distinct best are kept.
        With `seconds` it stops at the wall-clock budget (and as soon as a job
        reaches `target`); with `moves` (per job) and `rounds` instead, the
        result depends only on the seed.
    improve_many(problem, starts, seed, moves_per_start, workers) -> [c]
        decode (strings) -> repair -> local search, one result per usable start,
        the same whatever the number of workers.

Workers are spawned processes (safe next to torch's threads); each re-creates
the problem from its name or `module:Class` spec (or unpickles it) and keeps
it for every job. Jobs are seeded from (seed, round, job), never from the
worker that runs them.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import SeqlabError
from .problem import Problem, check_encoded, derive_seed
from .search_job import problem_ref, resolve, search

# ------------------------------------------------------------------ worker side
_W: dict = {}


def _init_worker(ref, stop_event) -> None:
    # Ctrl-C reaches the whole process group: the main process stops the pool and says
    # "interrupted" once; workers would each print a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _W["problem"] = resolve(ref)
    _W["stop"] = stop_event


def _job(args):
    starts, seeds, moves, seconds, target, *until = args
    stop = _W.get("stop")
    problem = _W["problem"]
    res, total = search(problem, starts, seeds, moves, seconds, target,
                         (stop.is_set if stop is not None else None), *until)
    if stop is not None and target is not None and any(problem.score(c) >= target for c in res):
        stop.set()
    return res, total


# ------------------------------------------------------------------ pool
class LocalPool:
    """A pool of worker processes bound to one problem (workers=1: run in this process).

        with LocalPool(problem, workers=4) as pool:
            improve_many(problem, starts, seed=0, moves_per_start=1000, pool=pool)
    """

    def __init__(self, problem, workers: int | None = None, start_method: str = "spawn"):
        self.problem = problem
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self._pool = None
        self._stop = None
        if self.workers > 1:
            # compile (or load) the numba kernels here first, so that the workers
            # only read the on-disk cache instead of all compiling at once
            problem.local_search(None, seed=0, max_moves=10)
            ctx = mp.get_context(start_method)
            self._stop = ctx.Event()
            self._pool = ctx.Pool(self.workers, initializer=_init_worker,
                                  initargs=(problem_ref(problem), self._stop))

    def run(self, jobs: list, use_stop: bool = False) -> list:
        """jobs: (starts, seeds, moves, seconds, target[, until]) tuples; results in job order."""
        if self._pool is None:
            out = []
            for starts, seeds, moves, seconds, target, *until in jobs:
                out.append(search(self.problem, starts, seeds, moves, seconds, target, None, *until))
            return out
        self._stop.clear()
        try:
            return self._pool.map(_job if use_stop else _job_nostop, jobs, chunksize=1)
        finally:
            self._stop.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_pool(problem, workers: int | None = None, ray: str | None = None, start_method: str = "spawn"):
    """The local process pool, or (ray: "auto", "local" or a cluster address) Ray tasks."""
    if ray:
        from .ray_pool import RayPool

        return RayPool(problem, workers, ray)
    return LocalPool(problem, workers, start_method)


def _job_nostop(args):
    starts, seeds, moves, seconds, target, *until = args
    return search(_W["problem"], starts, seeds, moves, seconds, target, None, *until)


# ------------------------------------------------------------------ helpers
def decode_many(problem, strings: Sequence[str]) -> tuple[list, int]:
    """Decode model samples; returns (constructions, number of unusable strings)."""
    out, bad = [], 0
    for s in strings:
        try:
            c = problem.decode(s)
        except Exception:
            c = None
        if c is None:
            bad += 1
        else:
            out.append(c)
    return out, bad


def pool_stats(scores: Sequence[float]) -> dict:
    """mean / median / mean of the top 20% / max of a list of scores."""
    if not scores:
        return {"size": 0, "mean": None, "median": None, "top20": None, "max": None}
    s = sorted(scores, reverse=True)
    top = s[: max(1, math.ceil(0.2 * len(s)))]
    return {"size": len(s), "mean": statistics.fmean(s), "median": statistics.median(s),
            "top20": statistics.fmean(top), "max": s[0]}


class Elite:
    """The best distinct constructions seen so far (at most `keep`), best first."""

    def __init__(self, problem, keep: int = 1000):
        self.problem = problem
        self.keep = keep
        self.items: dict[str, tuple[float, np.ndarray]] = {}

    def add(self, constructions) -> int:
        """Add constructions (invalid ones are ignored); returns how many were new."""
        new = 0
        for c in constructions:
            if c is None or not self.problem.is_valid(c):
                continue
            k = self.problem.key(c)
            if k not in self.items:
                self.items[k] = (float(self.problem.score(c)), c)
                new += 1
        if len(self.items) > self.keep:
            ranked = sorted(self.items.items(), key=lambda kv: (-kv[1][0], kv[0]))[: self.keep]
            self.items = dict(ranked)
        return new

    def ranked(self) -> list[tuple[float, np.ndarray]]:
        return [v for _, v in sorted(self.items.items(), key=lambda kv: (-kv[1][0], kv[0]))]

    def best_score(self) -> float | None:
        return max((v[0] for v in self.items.values()), default=None)

    def write(self, path) -> None:
        from ..atomic import write_text

        # one construction per line: an encoding with a newline would split (and corrupt) the pool
        write_text(path, "".join(check_encoded(self.problem, self.problem.encode(c)) + "\n"
                                 for _, c in self.ranked()))


@dataclass
class LocalResult:
    best: list                      # distinct valid constructions, best first
    scores: list[float]             # their scores
    log: list[dict] = field(default_factory=list)  # one dict per round (see run_local)
    moves: int = 0                  # total moves (proposals scored) over all jobs
    seconds: float = 0.0

    @property
    def best_score(self) -> float | None:
        return self.scores[0] if self.scores else None


# ------------------------------------------------------------------ the searchers
def improve_many(problem, starts: Sequence, seed=0, moves_per_start: int = 1000, workers: int | None = 1,
                 pool: LocalPool | None = None, target: float | None = None,
                 deadline: float | None = None, stats: dict | None = None) -> list:
    """Decode (strings) -> repair -> local search for a batch of starts (e.g. model
    samples); one valid construction per usable start, in order. A string that
    does not decode is dropped; None starts from scratch (randomised greedy).
    Start i is seeded from (seed, i), so the result does not depend on `workers`.
    `deadline` (a time.perf_counter() value) cuts the searches short when it passes;
    `stats`, a dict, receives the number of moves made ("moves")."""
    usable = []
    for s in starts:
        if isinstance(s, str):  # a model sample: decode; unusable ones are dropped
            decoded, _ = decode_many(problem, [s])
            if not decoded:
                continue
            s = decoded[0]
        usable.append(s)
    starts = usable
    if not starts:
        return []
    seeds = [derive_seed(seed, i) for i in range(len(starts))]
    until = None if deadline is None else time.time() + max(0.0, deadline - time.perf_counter())
    own = pool is None
    pool = LocalPool(problem, workers) if own else pool
    try:
        n_chunks = min(len(starts), pool.workers * 4)
        bounds = np.linspace(0, len(starts), n_chunks + 1).astype(int)
        jobs = [(starts[a:b], seeds[a:b], int(moves_per_start), None, target, until)
                for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        out, moves = [], 0
        for res, m in pool.run(jobs):
            out.extend(res)
            moves += m
        if stats is not None:
            stats["moves"] = moves
        return out
    finally:
        if own:
            pool.close()


def run_local(problem, seconds: float | None = None, seed: int = 0, workers: int | None = None,
              pool_out=None, *, moves: int | None = None, rounds: int | None = None,
              round_seconds: float | None = None, jobs_per_round: int | None = None,
              target: float | None = None, keep: int = 1000, init: Sequence | None = None,
              progress: Callable[[dict], None] | None = None, start_method: str = "spawn",
              first_round: int = 0, ray: str | None = None) -> LocalResult:
    """Repeated randomised-greedy + annealing runs in a process pool.

    Budget: `seconds` (wall clock; each round gets `round_seconds`, default
    seconds/10 clamped to 2..60 s) or `moves` per job for `rounds` rounds
    (deterministic: the result depends on seed and jobs_per_round only).
    Round r runs `jobs_per_round` jobs (default: workers); even-numbered jobs
    restart from scratch, odd ones continue from the best constructions so far
    (elitism; all from scratch while there are none). `init` seeds the elite
    (e.g. a resumed run's best). `pool_out`: a text file that receives the kept
    constructions, encoded, best first, after every round. `progress` gets each
    round's log entry: round, seconds, moves, new, distinct (new constructions
    not seen before), pool size/mean/median/top20/max (over the kept pool),
    best (best score so far). `ray`: run the jobs as Ray tasks (see ray_pool.py).
    """
    if seconds is None and moves is None:
        raise SeqlabError("run_local: give a time budget (seconds) or a moves budget (moves)")
    if moves is not None and seconds is None and rounds is None:
        rounds = 1
    t0 = time.perf_counter()
    end = None if seconds is None else t0 + float(seconds)
    if round_seconds is None and seconds is not None:
        round_seconds = min(60.0, max(2.0, float(seconds) / 10))
    elite = Elite(problem, keep)
    if init:
        elite.add(init)
    result = LocalResult(best=[], scores=[])
    with open_pool(problem, workers, ray, start_method) as pool:
        jpr = int(jobs_per_round or pool.workers)
        r = 0
        while True:
            if rounds is not None and r >= rounds:
                break
            now = time.perf_counter()
            if end is not None and now >= end:
                break
            sec = None if end is None else min(round_seconds, end - now)
            ranked = elite.ranked()
            jobs = []
            for j in range(jpr):
                start = ranked[(j // 2) % len(ranked)][1] if (j % 2 == 1 and ranked) else None
                # a resumed run (first_round > 0) draws new starts, not the first session's again
                jobs.append(([start], [derive_seed(seed, (first_round + r) * 1_000_003 + j)],
                             moves, sec, target))
            outs = pool.run(jobs, use_stop=seconds is not None and target is not None)
            found = [c for res, _ in outs for c in res]
            result.moves += sum(m for _, m in outs)
            new = elite.add(found)
            stats = pool_stats([s for s, _ in elite.items.values()])
            entry = {"round": r, "seconds": round(time.perf_counter() - t0, 3), "moves": result.moves,
                     "new": len(found), "distinct": new, "pool_size": stats["size"], "mean": stats["mean"],
                     "median": stats["median"], "top20": stats["top20"], "max": stats["max"],
                     "best": elite.best_score()}
            result.log.append(entry)
            if pool_out is not None:
                elite.write(pool_out)
            if progress is not None:
                progress(entry)
            r += 1
            best = elite.best_score()
            if target is not None and best is not None and best >= target:
                break
    ranked = elite.ranked()
    result.best = [c for _, c in ranked]
    result.scores = [s for s, _ in ranked]
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["LocalPool", "open_pool", "LocalResult", "Elite", "run_local", "improve_many", "decode_many", "pool_stats", "Problem"]
