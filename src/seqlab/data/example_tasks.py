"""Built-in tasks beyond next-token prediction (issue 20): generators of JSONL examples and
their exact verifiers. `seqlab data make NAME --out FILE.jsonl` writes one; `seqlab data
tasks` lists them with their type.

    classify  parens-balanced  strings of ( and ), balanced or not (about half each; most
                               unbalanced ones are one edit away from balanced)
              majority         0/1 strings of odd length 5-25: which digit is in the majority
              parity           0/1 strings of length 1-20: an even or odd number of 1s
              python-compiles  short Python programs from a small grammar, half of them edited
                               until compile() rejects them (up to 5 random edits): does
                               compile() accept it?
    regress   digit-sum        digit strings of length 1-12 -> the sum of their digits
              sine-forecast    32 values of a noisy sum of 1-3 sines -> the next 4 values
    seq2seq   reverse, sort    strings of a-j of length 1-20 -> reversed / sorted
              add              "a+b" with a, b of 1-10 digits -> their sum
              date-format      a date in one of many written formats -> ISO 8601

`check(example) -> bool` says whether an example's label or target is right for its input
(for sine-forecast: whether the continuation is the generator's, i.e. the series is one
noisy sum of sines; it checks the shape and that the noise-free part is recoverable).
"""

from __future__ import annotations

import calendar
import datetime
import math
import random
from dataclasses import dataclass
from typing import Callable


@dataclass
class ExampleTask:
    name: str
    type: str  # classify, regress, seq2seq
    description: str
    default_n: int
    make_one: Callable[[random.Random], dict]
    check: Callable[[dict], bool]

    def make(self, n: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        return [self.make_one(rng) for _ in range(n)]


# ---------------------------------------------------------------- classify


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += 1 if c == "(" else -1
        if depth < 0:
            return False
    return depth == 0


def _dyck(rng: random.Random, pairs: int) -> str:
    """A uniformly random-ish balanced string: a random walk that never goes below 0 and
    returns to 0 (rejection-free: close when forced, open when forced, else a coin)."""
    out, depth, opens = [], 0, 0
    while len(out) < 2 * pairs:
        if opens == pairs or (depth > 0 and rng.random() < 0.5):
            out.append(")")
            depth -= 1
        else:
            out.append("(")
            depth += 1
            opens += 1
    return "".join(out)


def _parens(rng: random.Random) -> dict:
    s = _dyck(rng, rng.randint(1, 10))
    if rng.random() < 0.5:
        s = _unbalance(rng, s)
    return {"input": s, "label": "balanced" if _balanced(s) else "unbalanced"}


def _unbalance(rng: random.Random, s: str) -> str:
    """One random edit of a balanced string, retried (up to 5 times) until it is unbalanced."""
    for _ in range(5):
        kind = rng.random()
        if kind < 0.4:  # flip one character
            i = rng.randrange(len(s))
            s = s[:i] + ("(" if s[i] == ")" else ")") + s[i + 1:]
        elif kind < 0.7:  # swap two different characters
            i, j = sorted(rng.sample(range(len(s)), 2))
            s = s[:i] + s[j] + s[i + 1:j] + s[i] + s[j + 1:]
        elif kind < 0.85:  # drop one
            i = rng.randrange(len(s))
            s = s[:i] + s[i + 1:] or "("
        else:  # a random string
            s = "".join(rng.choice("()") for _ in range(rng.randint(1, 20)))
        if not _balanced(s):
            break
    return s


def _bits(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice("01") for _ in range(rng.randint(lo, hi)))


def _majority(rng: random.Random) -> dict:
    s = _bits(rng, 2, 12)
    s = _bits(rng, len(s) * 2 + 1, len(s) * 2 + 1)  # odd length 5-25: no ties
    return {"input": s, "label": "1" if s.count("1") > len(s) // 2 else "0"}


def _parity(rng: random.Random) -> dict:
    s = _bits(rng, 1, 20)
    return {"input": s, "label": "odd" if s.count("1") % 2 else "even"}


NAMES = ["x", "y", "total", "n", "items", "k"]


def _expr(rng: random.Random, depth: int = 0) -> str:
    r = rng.random()
    if depth > 1 or r < 0.4:
        return rng.choice(NAMES + [str(rng.randint(0, 99))])
    if r < 0.7:
        return f"{_expr(rng, depth + 1)} {rng.choice(['+', '-', '*', '//', '%'])} {_expr(rng, depth + 1)}"
    if r < 0.85:
        return f"({_expr(rng, depth + 1)})"
    return f"{rng.choice(['len', 'abs', 'min', 'max'])}({_expr(rng, depth + 1)})"


def _statement(rng: random.Random, indent: int, depth: int = 0) -> list[str]:
    pad = "    " * indent
    r = rng.random()
    if depth >= 2 or r < 0.45:
        return [f"{pad}{rng.choice(NAMES)} = {_expr(rng)}"]
    if r < 0.6:
        return [f"{pad}print({_expr(rng)})"]
    head = rng.choice([f"if {_expr(rng)} > {_expr(rng)}:", f"for {rng.choice(NAMES)} in range({_expr(rng)}):",
                       f"while {_expr(rng)} < {_expr(rng)}:", f"def f({rng.choice(NAMES)}):"])
    body = [line for _ in range(rng.randint(1, 2)) for line in _statement(rng, indent + 1, depth + 1)]
    return [pad + head] + body


def _program(rng: random.Random) -> str:
    return "\n".join(line for _ in range(rng.randint(1, 3)) for line in _statement(rng, 0))


def compiles(source: str) -> bool:
    try:
        compile(source, "<example>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _python(rng: random.Random) -> dict:
    s = _program(rng)
    if rng.random() < 0.5:
        s = _corrupt(rng, s)
    return {"input": s, "label": "compiles" if compiles(s) else "error"}


def _corrupt(rng: random.Random, s: str) -> str:
    """Delete, duplicate or insert a character, or break an indentation; retried (up to 5
    edits) until compile() rejects it: some edits leave a valid program."""
    for _ in range(5):
        kind = rng.random()
        i = rng.randrange(len(s))
        if kind < 0.35:
            s = s[:i] + s[i + 1:]
        elif kind < 0.55:
            s = s[:i] + s[i] + s[i:]
        elif kind < 0.8:
            s = s[:i] + rng.choice("():=+, ") + s[i:]
        else:
            lines = s.split("\n")
            j = rng.randrange(len(lines))
            lines[j] = ("  " + lines[j]) if rng.random() < 0.5 else lines[j].lstrip()
            s = "\n".join(lines)
        if not compiles(s):
            break
    return s


# ---------------------------------------------------------------- regress


def _digit_sum(rng: random.Random) -> dict:
    s = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 12)))
    return {"input": s, "target": float(sum(map(int, s)))}


HISTORY, HORIZON, NOISE = 32, 4, 0.1


def _sines(rng: random.Random) -> dict:
    parts = [(rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.5), rng.uniform(0, 2 * math.pi))
             for _ in range(rng.randint(1, 3))]
    series = [sum(a * math.sin(w * t + p) for a, w, p in parts) + rng.gauss(0, NOISE)
              for t in range(HISTORY + HORIZON)]
    series = [round(v, 4) for v in series]
    return {"input": series[:HISTORY], "target": series[HISTORY:]}


def _check_sines(ex: dict) -> bool:
    x, y = ex["input"], ex["target"]
    return (len(x) == HISTORY and len(y) == HORIZON and all(isinstance(v, float) for v in x + y)
            and max(map(abs, x + y)) < 3.0 + 6 * NOISE)


# ---------------------------------------------------------------- seq2seq

LETTERS = "abcdefghij"


def _letters(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 20)))


def _add(rng: random.Random) -> dict:
    a, b = (rng.randint(0, 10 ** rng.randint(1, 10) - 1) for _ in range(2))
    return {"input": f"{a}+{b}", "target": str(a + b)}


def _check_add(ex: dict) -> bool:
    a, _, b = ex["input"].partition("+")
    return a.isdigit() and b.isdigit() and ex["target"] == str(int(a) + int(b))


MONTHS = list(calendar.month_name)[1:]
ABBR = list(calendar.month_abbr)[1:]


def _ordinal(d: int) -> str:
    return f"{d}{'th' if 10 <= d % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(d % 10, 'th')}"


DATE_FORMATS = [
    lambda d: f"{d.day}/{d.month}/{d.year}",  # day first
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{ABBR[d.month - 1]} {d.day} {d.year}",
    lambda d: f"{d.day}-{ABBR[d.month - 1]}-{d.year}",
    lambda d: f"{ABBR[d.month - 1].upper()} {d.day:02d} {d.year}",
    lambda d: f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    lambda d: f"{calendar.day_name[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
]


def _date(rng: random.Random) -> dict:
    d = datetime.date(1950, 1, 1) + datetime.timedelta(days=rng.randrange(365 * 100))
    return {"input": rng.choice(DATE_FORMATS)(d), "target": d.isoformat()}


def _check_date(ex: dict) -> bool:
    try:
        d = datetime.date.fromisoformat(ex["target"])
    except (ValueError, TypeError):
        return False
    return ex["input"] in {f(d) for f in DATE_FORMATS}


# ---------------------------------------------------------------- registry

TASKS: dict[str, ExampleTask] = {t.name: t for t in [
    ExampleTask("parens-balanced", "classify", "strings of ( and ) of length 1-20: balanced or not", 10_000,
                _parens, lambda ex: ex["label"] == ("balanced" if _balanced(ex["input"]) else "unbalanced")),
    ExampleTask("majority", "classify", "0/1 strings of odd length 5-25: the majority digit", 10_000, _majority,
                lambda ex: ex["label"] == ("1" if ex["input"].count("1") > len(ex["input"]) // 2 else "0")),
    ExampleTask("parity", "classify", "0/1 strings of length 1-20: even or odd number of 1s", 10_000, _parity,
                lambda ex: ex["label"] == ("odd" if ex["input"].count("1") % 2 else "even")),
    ExampleTask("python-compiles", "classify", "short Python programs, half edited until compile() rejects them: does compile() "
                "accept them?", 10_000, _python,
                lambda ex: ex["label"] == ("compiles" if compiles(ex["input"]) else "error")),
    ExampleTask("digit-sum", "regress", "digit strings of length 1-12 -> the sum of their digits", 10_000,
                _digit_sum, lambda ex: ex["target"] == float(sum(map(int, ex["input"])))),
    ExampleTask("sine-forecast", "regress", f"{HISTORY} values of a noisy sum of 1-3 sines -> the next {HORIZON}",
                10_000, _sines, _check_sines),
    ExampleTask("reverse", "seq2seq", "strings of a-j of length 1-20 -> reversed", 10_000,
                lambda rng: (lambda s: {"input": s, "target": s[::-1]})(_letters(rng)),
                lambda ex: ex["target"] == ex["input"][::-1]),
    ExampleTask("sort", "seq2seq", "strings of a-j of length 1-20 -> their characters sorted", 10_000,
                lambda rng: (lambda s: {"input": s, "target": "".join(sorted(s))})(_letters(rng)),
                lambda ex: ex["target"] == "".join(sorted(ex["input"]))),
    ExampleTask("add", "seq2seq", "'a+b' with a, b of 1-10 digits -> a + b", 20_000, _add, _check_add),
    ExampleTask("date-format", "seq2seq", "a date 1950-2049 in one of 10 written formats -> ISO 8601", 10_000,
                _date, _check_date),
]}
