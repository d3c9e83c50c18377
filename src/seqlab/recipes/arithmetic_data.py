"""Synthetic arithmetic word problems with verifiable answers.

A problem is (a, op, b): multi-digit addition and subtraction, and a two-digit
by one-digit multiplication; the question is phrased in one of a few English
templates. Three disjoint sets come out of one seed: a held-out test set, the
problems used for training (pretraining text, SFT examples, RL prompts), and
nothing of the test set ever appears in the others.

Stage formats:
    pretraining text   "What is 23 plus 45? 23+45=68"
    SFT / RL prompt    "What is 23 plus 45?<start_working_out>"
    SFT completion     "23+45=68<end_working_out><SOLUTION>68</SOLUTION>"
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..post.template import ReasoningTemplate

OPS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b), "*": ("times", lambda a, b: a * b)}
PHRASES = {
    "+": ["What is {a} plus {b}?", "Add {a} and {b}.", "{a} + {b} = ?", "Sum of {a} and {b}?"],
    "-": ["What is {a} minus {b}?", "Subtract {b} from {a}.", "{a} - {b} = ?", "Take {b} from {a}."],
    "*": ["What is {a} times {b}?", "Multiply {a} by {b}.", "{a} * {b} = ?", "Product of {a} and {b}?"],
}


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int
    phrase: int  # index into PHRASES[op]

    @property
    def answer(self) -> int:
        return OPS[self.op][1](self.a, self.b)

    @property
    def question(self) -> str:
        return PHRASES[self.op][self.phrase].format(a=self.a, b=self.b)

    @property
    def working(self) -> str:
        return f"{self.a}{self.op}{self.b}={self.answer}"

    def key(self) -> tuple:
        return (self.a, self.op, self.b)


def draw_problem(rng: random.Random, digits: int = 2) -> Problem:
    """+ and -: two `digits`-digit operands; *: a `digits`-digit number times one digit 2..9."""
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    op = rng.choice("+-*")
    a, b = rng.randint(lo, hi), (rng.randint(2, 9) if op == "*" else rng.randint(lo, hi))
    return Problem(a, op, b, rng.randrange(len(PHRASES[op])))


def split_problems(seed: int, n_test: int, n_train: int, digits: int = 2) -> tuple[list[Problem], list[Problem]]:
    """(test, train) with no (a, op, b) in both."""
    rng = random.Random(seed)
    test, seen = [], set()
    while len(test) < n_test:
        p = draw_problem(rng, digits)
        if p.key() not in seen:
            seen.add(p.key())
            test.append(p)
    train = []
    while len(train) < n_train:
        p = draw_problem(rng, digits)
        if p.key() not in seen:
            train.append(p)
    return test, train


def pretrain_line(p: Problem) -> str:
    return f"{p.question} {p.working}"


def sft_row(p: Problem, t: ReasoningTemplate) -> dict:
    return {"prompt": t.prompt(p.question), "completion": t.completion(p.working, str(p.answer))}


def rl_row(p: Problem, t: ReasoningTemplate) -> dict:
    return {"prompt": t.prompt(p.question), "answer": str(p.answer)}
