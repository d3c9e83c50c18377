"""Built-in task generators with verifiers (the makemore-for-maths datasets of
the lecture "Transformers and Makemore", A. Z. Wagner, 2023).

A task makes example strings and judges any string: `check(s)` returns
(wellformed, obeys_rule). Where the task's distribution allows it,
`entropy_floor()` gives the exact best achievable loss in nats per token
(characters + the end token), i.e. the data's entropy per token.

Positions count from 1, as in the lecture ("the 13th digit"): `13` is the 13th
character, `n-20` is the character at position n - 20 where n is the length of
the string, and a negative `-28` means s[-28] in Python terms (the 28th from the
end).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional

from ..errors import SeqlabError


@dataclass
class Task:
    name: str
    description: str
    default_n: int
    make: Callable[[int, random.Random], list[str]]
    check: Callable[[str], tuple[bool, bool]]
    entropy_floor: Optional[Callable[[], float]] = None
    options: dict = field(default_factory=dict)


# ---------------------------------------------------------------- equal positions
def resolve_position(pos: str, n: int) -> int:
    """A 1-based position spec ('13', 'n-20', 'n', '-28') -> 0-based index into a length-n string."""
    pos = pos.strip().replace(" ", "")
    if pos == "n":
        return n - 1
    if pos.startswith("n-"):
        return n - int(pos[2:]) - 1
    k = int(pos)
    if k == 0:
        raise ValueError("positions count from 1")
    return n + k if k < 0 else k - 1


def _groups(equalities, n: int) -> list[list[int]]:
    """Union-find of the positions tied together by the equalities, for length n."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in equalities:
        ra, rb = find(resolve_position(a, n)), find(resolve_position(b, n))
        parent[ra] = rb
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def positions_task(name: str, equalities: list[tuple[str, str]], length: tuple[int, int], default_n: int,
                   description: str = "") -> Task:
    """Uniform random 0/1 strings, length uniform in [lo, hi], with s[a] == s[b] for each pair."""
    lo, hi = length
    if not 1 <= lo <= hi:
        raise SeqlabError(f"task {name}: bad length range {lo}-{hi}")
    for a, b in equalities:
        for p in (a, b):
            for n in (lo, hi):
                try:
                    i = resolve_position(p, n)
                except ValueError:
                    raise SeqlabError(f"task {name}: bad position {p!r} (use 13, n-20 or -28; 1-based)") from None
                if not 0 <= i < n:
                    raise SeqlabError(f"task {name}: position {p} is outside strings of length {n}")
    group_cache = {n: _groups(equalities, n) for n in range(lo, hi + 1)}

    def make(count: int, rng: random.Random) -> list[str]:
        out = []
        for _ in range(count):
            n = rng.randint(lo, hi)
            s = [""] * n
            for group in group_cache[n]:  # one fair bit per group of tied positions
                bit = rng.choice("01")
                for i in group:
                    s[i] = bit
            out.append("".join(s))
        return out

    def check(s: str) -> tuple[bool, bool]:
        n = len(s)
        if not (lo <= n <= hi) or set(s) - {"0", "1"}:
            return False, False
        return True, all(s[resolve_position(a, n)] == s[resolve_position(b, n)] for a, b in equalities)

    def floor() -> float:
        # H(string) = ln(#lengths) + (#free bits) ln 2; per token = E[H] / E[n + 1]
        lengths = range(lo, hi + 1)
        mean_h = math.log(len(lengths)) + sum(len(group_cache[n]) for n in lengths) / len(lengths) * math.log(2)
        return mean_h / (sum(n + 1 for n in lengths) / len(lengths))

    rule = ", ".join(f"{a}={b}" for a, b in equalities)
    desc = description or f"0/1 strings of length {lo}-{hi} with equal digits at positions {rule} (1-based)"
    return Task(name, desc, default_n, make, check, floor, {"equal": equalities, "length": length})


def parse_positions_options(equal: list[str], length: str) -> tuple[list[tuple[str, str]], tuple[int, int]]:
    """'--equal 13=22 --length 30-40' -> ([('13', '22')], (30, 40))."""
    pairs = []
    for spec in equal:
        if spec.count("=") != 1:
            raise SeqlabError(f"--equal {spec!r}: expected A=B, e.g. 13=22 or 18=n-20")
        a, b = spec.split("=")
        pairs.append((a.strip(), b.strip()))
    try:
        lo, hi = (int(x) for x in length.split("-")) if "-" in length else (int(length),) * 2
    except ValueError:
        raise SeqlabError(f"--length {length!r}: expected A-B, e.g. 30-40") from None
    return pairs, (lo, hi)


# ---------------------------------------------------------------- twos
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


def _floor_unique_2() -> float:
    # n uniform in 10..15; position of the 2 uniform in n; the other n-1 digits fair bits
    ns = range(10, 16)
    h = sum(math.log(6) + math.log(n) + (n - 1) * math.log(2) for n in ns) / 6
    return h / (sum(n + 1 for n in ns) / 6)


def _zero_or_two(count: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        n = rng.randint(30, 40)
        s = [rng.choice("01") for _ in range(n)]
        if rng.random() < 0.5:
            for i in rng.sample(range(n), 2):
                s[i] = "2"
        out.append("".join(s))
    return out


def _check_zero_or_two(s: str) -> tuple[bool, bool]:
    ok = 30 <= len(s) <= 40 and not set(s) - {"0", "1", "2"}
    return ok, ok and s.count("2") in (0, 2)


def _floor_zero_or_two() -> float:
    # the two branches (no 2s / two 2s) are disjoint, each with probability 1/2
    ns = range(30, 41)
    h = sum(math.log(11) + math.log(2) + 0.5 * n * math.log(2)
            + 0.5 * (math.log(math.comb(n, 2)) + (n - 2) * math.log(2)) for n in ns) / 11
    return h / (sum(n + 1 for n in ns) / 11)


# ---------------------------------------------------------------- Fibonacci
SEED_MAX = 999  # seeds x1, x2 uniform in 1..999, as in the lecture's examples


def _fib_line(x1: int, x2: int) -> str:
    xs = [x1, x2]
    while len(xs) < 7:
        xs.append(xs[-1] + xs[-2])
    return ",".join(map(str, xs))


def _parse_ints(s: str, count: int, last_may_be_empty: bool = False) -> Optional[list[str]]:
    parts = s.split(",")
    if len(parts) != count:
        return None
    for i, p in enumerate(parts):
        if p == "" and last_may_be_empty and i == count - 1:
            continue
        if not p.isdigit() or not p.isascii():
            return None
    return parts


def _check_fib(s: str) -> tuple[bool, bool]:
    parts = _parse_ints(s, 7)
    if parts is None:
        return False, False
    xs = [int(p) for p in parts]
    return True, parts[:2] == [str(x) for x in xs[:2]] and s == _fib_line(xs[0], xs[1])


def fib2_line(x1: int, x2: int) -> str:
    """x3 = x1 + x2 with digits 7 and 8 swapped; x4 = reverse(str(x2 + x3 + 171)) with every 5
    doubled; x5 = x3 + x4 written only up to (not including) its first 4."""
    x3 = str(x1 + x2).translate(str.maketrans("78", "87"))
    x4 = str(x2 + int(x3) + 171)[::-1].replace("5", "55")
    x5 = str(int(x3) + int(x4)).split("4")[0]
    return f"{x1},{x2},{x3},{x4},{x5}"


def _check_fib2(s: str) -> tuple[bool, bool]:
    parts = _parse_ints(s, 5, last_may_be_empty=True)
    if parts is None:
        return False, False
    try:
        return True, s == fib2_line(int(parts[0]), int(parts[1]))
    except ValueError:
        return True, False


def _seed_pairs(rng: random.Random, count: int):
    return [(rng.randint(1, SEED_MAX), rng.randint(1, SEED_MAX)) for _ in range(count)]


@lru_cache(maxsize=None)
def _mean_len(line_fn) -> float:
    total = 0
    for a in range(1, SEED_MAX + 1):
        for b in range(1, SEED_MAX + 1):
            total += len(line_fn(a, b))
    return total / SEED_MAX**2


def _floor_seeds(line_fn) -> Callable[[], float]:
    # the line is a function of the two seeds (which it shows), so H = 2 ln 999 per line
    return lambda: 2 * math.log(SEED_MAX) / (_mean_len(line_fn) + 1)


# ---------------------------------------------------------------- boards
BOARD = 8
FORBIDDEN_D2 = (16, 25)  # Euclidean distance 4 or 5


def _conflicts(size: int = BOARD) -> list[list[int]]:
    """For each cell, the earlier cells (row-major) at distance 4 or 5 from it."""
    out = []
    for i in range(size * size):
        r, c = divmod(i, size)
        out.append([j for j in range(i) if (r - j // size) ** 2 + (c - j % size) ** 2 in FORBIDDEN_D2])
    return out


_CONFLICTS = _conflicts()


def _board(count: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(count):
        s = []
        for i in range(BOARD * BOARD):
            allowed = all(s[j] == "0" for j in _CONFLICTS[i])
            s.append("1" if allowed and rng.random() < 0.5 else "0")
        out.append("".join(s))
    return out


def _check_board(s: str) -> tuple[bool, bool]:
    if len(s) != BOARD * BOARD or set(s) - {"0", "1"}:
        return False, False
    return True, all(not (s[i] == "1" and any(s[j] == "1" for j in _CONFLICTS[i])) for i in range(len(s)))


# ---------------------------------------------------------------- registry
BUILTIN: dict[str, Task] = {}


def _register(task: Task) -> None:
    BUILTIN[task.name] = task


_register(positions_task("rule-13-22", [("13", "22")], (30, 40), 1000))
_register(positions_task("rule-18-47", [("18", "47")], (50, 200), 100_000))
_register(positions_task("rule-18-n20", [("18", "n-20")], (50, 200), 100_000))
_register(positions_task("rule-last2", [("-2", "-1")], (50, 200), 100_000,
                         "0/1 strings of length 50-200 whose last two digits are equal"))
_register(positions_task("rule-three", [("18", "39"), ("31", "44"), ("4", "28")], (50, 200), 100_000))
_register(positions_task("rule-three-neg", [("18", "39"), ("31", "44"), ("4", "-28")], (50, 200), 100_000))
_register(Task("unique-2", "0/1 strings of length 10-15 with exactly one '2'", 10_000,
               _unique_2, _check_unique_2, _floor_unique_2))
_register(Task("zero-or-two-2s", "0/1 strings of length 30-40; with probability 1/2 exactly two digits are '2'",
               10_000, _zero_or_two, _check_zero_or_two, _floor_zero_or_two))
_register(Task("fibonacci", "7 comma-separated Fibonacci-like terms from two seeds in 1-999", 100_000,
               lambda n, rng: [_fib_line(a, b) for a, b in _seed_pairs(rng, n)], _check_fib,
               _floor_seeds(_fib_line)))
_register(Task("fibonacci-2", "the lecture's 'Fibonacci part 2': x3 = x1+x2 with 7<->8, "
               "x4 = reverse(x2+x3+171) with 5s doubled, x5 = x3+x4 up to its first 4", 100_000,
               lambda n, rng: [fib2_line(a, b) for a, b in _seed_pairs(rng, n)], _check_fib2,
               _floor_seeds(fib2_line)))
_register(Task("board-4-5", "8x8 0/1 boards (64 chars, row-major) with no two 1s at distance 4 or 5, "
               "filled cell by cell: an allowed 1 is placed with probability 1/2", 10_000, _board, _check_board))
POSITIONS_HELP = ("generic 'positions' task: --equal A=B (repeatable; 1-based, n-20 counts from the end, "
                  "-28 is s[-28]) and --length LO-HI")


def get_task(name: str, equal: list[str] | None = None, length: str | None = None) -> Task:
    if name == "positions":
        if not equal:
            raise SeqlabError("task 'positions' needs at least one --equal A=B (e.g. --equal 13=22)")
        pairs, rng = parse_positions_options(equal, length or "30-40")
        return positions_task("positions", pairs, rng, 1000)
    if name not in BUILTIN:
        raise SeqlabError(f"unknown task '{name}' (known: {', '.join(sorted(BUILTIN))}, positions)")
    return BUILTIN[name]


def make_lines(task: Task, n: int, seed: int) -> list[str]:
    return task.make(n, random.Random(seed))
