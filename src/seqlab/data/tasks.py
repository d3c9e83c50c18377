"""Built-in task generators with verifiers (the makemore-for-maths datasets).

A task makes example strings and judges any string: `check(s)` returns
(wellformed, obeys_rule). Positions count from 1, as in the lecture: "the 13th
digit"; a position written n-20 counts from the end of the string (n is its
length), and -28 means s[-28] in Python terms, the 28th from the end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from ..errors import SeqlabError


@dataclass
class Task:
    name: str
    description: str
    default_n: int
    make: Callable[[int, random.Random], list[str]]
    check: Callable[[str], tuple[bool, bool]]
    options: dict = field(default_factory=dict)


def _resolve(pos: str, n: int) -> int:
    """A 1-based position spec ('13', 'n-20', '-28') -> 0-based index into a length-n string."""
    pos = pos.strip()
    if pos.startswith("n-"):
        return n - int(pos[2:]) - 1
    if pos == "n":
        return n - 1
    k = int(pos)
    return n + k if k < 0 else k - 1


def positions_task(name: str, equalities: list[tuple[str, str]], length: tuple[int, int], default_n: int,
                   description: str = "") -> Task:
    """Random 0/1 strings of length in [a, b] with s[i] == s[j] for each pair (1-based)."""
    lo, hi = length
    for a, b in equalities:
        for p in (a, b):
            try:
                idx = [_resolve(p, lo), _resolve(p, hi)]
            except ValueError:
                raise SeqlabError(f"task {name}: bad position {p!r} (use 13, n-20 or -28)") from None
            if min(idx) < 0 or max(idx) >= hi or _resolve(p, lo) >= lo:
                raise SeqlabError(f"task {name}: position {p} is outside strings of length {lo}-{hi}")

    def make(count: int, rng: random.Random) -> list[str]:
        out = []
        for _ in range(count):
            n = rng.randint(lo, hi)
            s = [rng.choice("01") for _ in range(n)]
            for a, b in equalities:  # later equalities win; the built-ins are disjoint
                s[_resolve(b, n)] = s[_resolve(a, n)]
            out.append("".join(s))
        return out

    def check(s: str) -> tuple[bool, bool]:
        n = len(s)
        if not (lo <= n <= hi) or set(s) - {"0", "1"}:
            return False, False
        return True, all(s[_resolve(a, n)] == s[_resolve(b, n)] for a, b in equalities)

    rule = ", ".join(f"{a}={b}" for a, b in equalities)
    desc = description or f"0/1 strings of length {lo}-{hi} with equal digits at positions {rule} (1-based)"
    return Task(name, desc, default_n, make, check, {"equal": equalities, "length": length})


def _unique_2(count: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        n = rng.randint(10, 15)
        s = [rng.choice("01") for _ in range(n)]
        s[rng.randrange(n)] = "2"
        out.append("".join(s))
    return out


def _check_unique_2(s: str) -> tuple[bool, bool]:
    ok = 10 <= len(s) <= 15 and not set(s) - {"0", "1", "2"}
    return ok, ok and s.count("2") == 1


BUILTIN: dict[str, Task] = {}


def _register(task: Task) -> None:
    BUILTIN[task.name] = task


_register(positions_task("rule-13-22", [("13", "22")], (30, 40), 1000))
_register(Task("unique-2", "0/1 strings of length 10-15 with exactly one '2'", 10000, _unique_2, _check_unique_2))


def get_task(name: str) -> Task:
    if name not in BUILTIN:
        raise SeqlabError(f"unknown task '{name}' (known: {', '.join(sorted(BUILTIN))})")
    return BUILTIN[name]


def make_lines(task: Task, n: int, seed: int) -> list[str]:
    return task.make(n, random.Random(seed))
