"""The discovery-problem protocol: what a search (local or model-based) needs to know
about a family of combinatorial constructions.

A problem is a class constructed as `Problem(n)`. Its constructions are small
numpy integer arrays in a canonical form that the problem documents (sorted
cell indices for point sets, sorted edge ids for graphs, sorted marks for
Golomb rulers), so that two equal constructions compare equal array-wise and
`key(c)` can deduplicate them.

Methods (all scores are higher-is-better; a minimisation problem negates):

    encode(c) -> str              one character = one token; never a newline
    decode(s) -> c | None         any string a model may produce; unusable parts
                                  are dropped, duplicates removed; None when a
                                  non-empty string holds nothing usable;
                                  decode(encode(c)) == c exactly
    vocabulary() -> str           every character encode can emit
    is_valid(c) -> bool           exact
    violations(c) -> int          how far from valid (0 iff valid)
    repair(c, rng) -> c           a valid construction close to c
    score(c) -> float             higher is better
    random_construction(rng) -> c a random valid construction (randomised greedy)
    local_search(starts, seed, max_moves, seconds, target) -> [c]
                                  improve each start (None: one run from scratch);
                                  every result is valid
    draw(c, path)                 a PNG picture
    best_known(n) -> float | None best published value, in score units
    symmetries(c) -> [c]          the images of c under the problem's symmetry
                                  group (for data augmentation); default [c]
    pretty(c) -> str              a human-readable multi-line rendering

User problems subclass `Problem` (or just provide the same methods) and are
passed as `module:Class` or `path/to/file.py:Class`. Only `encode`, `decode`,
`is_valid`, `score` and `random_construction` are essential: the defaults of
`repair` and `local_search` fall back to random valid constructions.
"""

from __future__ import annotations

import time
import unicodedata
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..errors import SeqlabError

# The first 62 values are ASCII letters and digits (readable in files); beyond
# that come Unicode letters (category L*, all printable and never whitespace),
# which seqlab's char tokenizer treats like any other character.
_ASCII = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@lru_cache(maxsize=None)
def value_alphabet(size: int) -> str:
    """`size` distinct one-character tokens: value i is written as alphabet[i]."""
    chars = list(_ASCII[:size])
    cp = 0x100
    while len(chars) < size:
        ch = chr(cp)
        if unicodedata.category(ch).startswith("L") and ch.isprintable() and not ch.isspace():
            chars.append(ch)
        cp += 1
    return "".join(chars)


_INDEX_LIMIT = 1 << 14


@lru_cache(maxsize=1)
def _big_index() -> dict:
    return {ch: i for i, ch in enumerate(value_alphabet(_INDEX_LIMIT))}


def value_index(ch: str) -> int | None:
    """The value a character stands for in value_alphabet (None if it is not one)."""
    return _big_index().get(ch)


def as_rng(rng) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed or None (seed 0)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def derive_seed(seed, index: int) -> int:
    """A 63-bit seed for the `index`-th independent stream of `seed` (int or Generator)."""
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**63 - 1))
    ss = np.random.SeedSequence([int(seed) & (2**63 - 1), index])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class Problem:
    """Base class of discovery problems (see the module docstring for the protocol)."""

    name: str = ""
    description: str = ""
    # n -> best known value in score units; each subclass cites its sources.
    best_known_table: dict[int, float] = {}
    min_n: int = 1
    max_n: int | None = None

    def __init__(self, n: int):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            raise SeqlabError(f"problem '{self.name}': n must be an integer, got {n!r}")
        n = int(n)
        if n < self.min_n or (self.max_n is not None and n > self.max_n):
            hi = f"..{self.max_n}" if self.max_n is not None else " or more"
            raise SeqlabError(f"problem '{self.name}': n={n} is out of range ({self.min_n}{hi})")
        self.n = n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n})"

    def __reduce__(self):  # pickles as (class, n): what a worker process needs
        return (type(self), (self.n,))

    # ------------------------------------------------------------ essentials
    def encode(self, c) -> str:
        raise NotImplementedError

    def decode(self, s: str):
        raise NotImplementedError

    def vocabulary(self) -> str:
        raise NotImplementedError

    def is_valid(self, c) -> bool:
        raise NotImplementedError

    def score(self, c) -> float:
        raise NotImplementedError

    def random_construction(self, rng=None):
        raise NotImplementedError

    # ------------------------------------------------------------ defaults
    def violations(self, c) -> int:
        return 0 if self.is_valid(c) else 1

    def repair(self, c, rng=None):
        """Default: keep c when valid, else a random valid construction."""
        if c is not None and self.is_valid(c):
            return c
        return self.random_construction(as_rng(rng))

    def local_search(self, starts: Sequence | None = None, seed=0, max_moves: int | None = None,
                     seconds: float | None = None, target: float | None = None) -> list:
        """Default: repair each start, then keep the best of it and up to `max_moves`
        random valid constructions (1000 when neither `max_moves` nor `seconds` is given),
        a plain random search that stops when `seconds` have passed or `target` is reached. Sets
        `self.last_moves`, the constructions drawn."""
        rng = as_rng(seed)
        starts = [None] if starts is None else list(starts)
        deadline = None if seconds is None else time.perf_counter() + seconds
        out, moves = [], 0
        for s in starts:
            best = self.repair(s, rng) if s is not None else self.random_construction(rng)
            best_score = self.score(best)
            moves_here = 0
            budget = max_moves if max_moves is not None else (1000 if deadline is None else None)
            while budget is None or moves_here < budget:
                if (deadline is not None and time.perf_counter() >= deadline) or (
                        target is not None and best_score >= target):
                    break
                moves_here += 1
                c = self.random_construction(rng)
                moves += 1
                if (score := self.score(c)) > best_score:
                    best, best_score = c, score
            out.append(best)
        self.last_moves = moves
        return out

    def key(self, c) -> str:
        """Deduplication key: equal constructions have equal keys."""
        return self.encode(c)

    def symmetries(self, c) -> list:
        return [c]

    def pretty(self, c) -> str:
        return self.encode(c)

    def draw(self, c, path) -> None:
        """Default picture: the pretty text rendering."""
        from ..atomic import atomic_path
        from ..plots import _plt

        plt = _plt()
        text = self.pretty(c)
        lines = text.splitlines() or [""]
        fig, ax = plt.subplots(figsize=(max(3, 0.12 * max(map(len, lines))), max(2, 0.22 * len(lines))))
        ax.axis("off")
        ax.text(0, 1, text, family="monospace", va="top", fontsize=8, transform=ax.transAxes)
        ax.set_title(f"{self.name} n={self.n}: score {self.score(c):g}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)

    @classmethod
    def best_known(cls, n: int) -> float | None:
        v = cls.best_known_table.get(int(n))
        return None if v is None else float(v) + 0.0  # + 0.0: golomb n = 1's -0 shows as 0


def check_encoded(problem: Problem, s: str) -> str:
    """Raise if an encoding breaks the one-character-one-token contract."""
    if "\n" in s or "\r" in s:
        raise SeqlabError(f"problem '{problem.name}': encode() produced a newline")
    return s
