"""A user problem for `seqlab discover`: Sidon sets (all pairwise sums distinct) in
0..n-1, maximising the size. Run it with

    seqlab discover examples/discover/sidon.py:Sidon --n 40 --out runs/sidon --minutes 2
"""

import numpy as np

from seqlab.discover.problem import Problem, as_rng, value_alphabet


class Sidon(Problem):
    name = "sidon"
    description = "subsets of 0..n-1 with all pairwise sums a+b (a <= b) distinct; maximise the size"
    # a Sidon set is a Golomb ruler: optimal lengths (OEIS A003022) G(8) = 34 <= 39 < G(9) = 44
    best_known_table = {40: 8}

    def vocabulary(self):
        return value_alphabet(self.n)  # one character per element 0..n-1

    def encode(self, c):
        return "".join(self.vocabulary()[i] for i in c)

    def decode(self, s):
        v = self.vocabulary()
        c = sorted({v.index(ch) for ch in s if ch in v})  # unknown characters are dropped
        return np.array(c, dtype=np.int64) if c else None

    def is_valid(self, c):
        sums = [int(a) + int(b) for i, a in enumerate(c) for b in c[i:]]
        return len(sums) == len(set(sums))

    def score(self, c):
        return float(len(c))

    def random_construction(self, rng=None):
        rng = as_rng(rng)
        c: list[int] = []
        for x in rng.permutation(self.n):  # randomised greedy: add what keeps it valid
            if self.is_valid(sorted(c + [int(x)])):
                c = sorted(c + [int(x)])
        return np.array(c, dtype=np.int64)

    def repair(self, c, rng=None):
        rng = as_rng(rng)
        c = list(c)
        while not self.is_valid(c):  # drop random elements until valid
            c.pop(int(rng.integers(len(c))))
        return np.array(c, dtype=np.int64)
