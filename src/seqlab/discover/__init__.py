"""Discovery: search for combinatorial constructions (PatternBoost, Charton-Ellenberg-
Wagner-Williamson 2024): local search improves constructions, a sequence model
trained on the best proposes new ones, repeat.

    problem.py      the protocol a problem implements (encode/decode/score/...)
    problems/       the built-ins and the registry (get_problem, list_problems)
    local.py        the `local` searcher (run_local) and improve_many for the loop
    command.py      the `seqlab discover` verb

Importing this package is cheap: numba kernels compile (or load from the cache)
on first use.
"""

from .local import LocalPool, LocalResult, improve_many, run_local
from .problem import Problem
from .problems import get_problem, list_problems

__all__ = ["Problem", "get_problem", "list_problems", "run_local", "improve_many", "LocalPool", "LocalResult"]
