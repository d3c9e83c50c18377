"""One local-search job, as any worker runs it (a process-pool worker, a Ray task): the
problem travels as a reference (a name, or the object itself) and is resolved there."""

from __future__ import annotations

import inspect
import time


def problem_ref(problem):
    spec = getattr(problem, "spec", None) or getattr(problem, "name", None)
    from .problems import PROBLEMS

    if spec and (spec in PROBLEMS or ":" in spec):
        return ("spec", spec, problem.n)
    return ("object", problem)


def resolve(ref):
    if ref[0] == "spec":
        from .problems import get_problem

        return get_problem(ref[1], ref[2])
    return ref[1]


def search(problem, starts, seeds, moves, seconds, target, stop, until=None):
    """Run local_search start by start (each with its own seed); returns (results, moves).
    `seconds` bounds this call; `until` (a time.time() value, shared by all workers)
    bounds every start of a batch that was queued at once."""
    kw = {}
    params = inspect.signature(problem.local_search).parameters
    if stop is not None and "stop" in params:
        kw["stop"] = stop
    out, total = [], 0
    deadline = None if seconds is None else time.perf_counter() + seconds
    if until is not None:
        left = max(0.0, until - time.time())
        deadline = time.perf_counter() + (left if deadline is None else min(left, deadline - time.perf_counter()))
    for st, sd in zip(starts, seeds):
        left = None if deadline is None else max(0.0, deadline - time.perf_counter())
        res = problem.local_search([st], seed=sd, max_moves=moves, seconds=left, target=target, **kw)
        out.append(res[0])
        total += int(getattr(problem, "last_moves", 0) or 0)
    return out, total
