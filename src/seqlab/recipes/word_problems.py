"""Arithmetic word problems for post-training a pretrained chat model.

Four kinds, drawn in equal shares:
    +         two two-digit or two three-digit numbers ("What is 234 plus 581?")
    -         the same sizes, larger minus smaller ("Subtract 45 from 92.")
    *         a two- or three-digit number times a one-digit one, or two two-digit numbers
    two-step  a short story with two operations ("A shop has 45 apples. It sells 12 and
              then gets 30 more. How many apples does it have now?")

One seed gives disjoint test, dev and training problems: a problem's identity is its
kind, story and operands with the operands of the first operation sorted, so neither a
held-out problem nor its operand-swapped twin ("45 + 23" for "23 + 45") is ever trained on,
whatever the phrasing. Tune on dev, report test.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..post.template import ReasoningTemplate

KINDS = ("+", "-", "*", "two-step")
PHRASES = {
    "+": ["What is {a} plus {b}?", "Add {a} and {b}.", "What is {a} + {b}?", "What is the sum of {a} and {b}?"],
    "-": ["What is {a} minus {b}?", "Subtract {b} from {a}.", "What is {a} - {b}?", "Take {b} away from {a}."],
    "*": ["What is {a} times {b}?", "Multiply {a} by {b}.", "What is {a} * {b}?",
          "What is the product of {a} and {b}?"],
}
# story, first operation, second operation: the answer is (a op1 b) op2 c
STORIES = [
    ("A shop has {a} apples. It sells {b} and then gets {c} more. How many apples does it have now?", "-", "+"),
    ("Sam has {a} coins and finds {b} more. Then he spends {c}. How many coins does Sam have left?", "+", "-"),
    ("There are {a} boxes with {b} pens in each. {c} pens are lost. How many pens are left?", "*", "-"),
    ("A bus carries {a} people. At the first stop {b} get off and at the second {c} get on. "
     "How many people are on the bus?", "-", "+"),
    ("Mia reads {a} pages a day for {b} days, then {c} more pages. How many pages has she read?", "*", "+"),
]
APPLY = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}

# The system prompt of the GRPO workshop: the reasoning format, asked for in words.
SYSTEM = ("You are given a problem. Think about the problem and provide your working out. Place it between "
          "<start_working_out> and <end_working_out>. Then, provide your solution between <SOLUTION></SOLUTION>")


@dataclass(frozen=True)
class WordProblem:
    kind: str
    phrase: int  # index into PHRASES[kind] or STORIES
    a: int
    b: int
    c: int = 0  # two-step only

    @property
    def question(self) -> str:
        text = STORIES[self.phrase][0] if self.kind == "two-step" else PHRASES[self.kind][self.phrase]
        return text.format(a=self.a, b=self.b, c=self.c)

    def _steps(self) -> list[tuple[int, str, int, int]]:
        if self.kind != "two-step":
            return [(self.a, self.kind, self.b, APPLY[self.kind](self.a, self.b))]
        _, op1, op2 = STORIES[self.phrase]
        x = APPLY[op1](self.a, self.b)
        return [(self.a, op1, self.b, x), (x, op2, self.c, APPLY[op2](x, self.c))]

    @property
    def answer(self) -> int:
        return self._steps()[-1][3]

    @property
    def working(self) -> str:
        return ", ".join(f"{x}{op}{y}={z}" for x, op, y, z in self._steps())

    @property
    def column_working(self) -> str:
        """The working out digit by digit, as on paper: "457+386: 7+6=13, 5+8+1=14, 4+3+1=8,
        so 457+386=843". Each step is a one-digit fact the model can get right, where the
        direct working ("457+386=843") asks for the whole result at once."""
        return "; ".join(_columns(x, op, y) for x, op, y, _ in self._steps())

    def key(self) -> tuple:
        first = tuple(sorted((self.a, self.b)))
        return (self.kind, self.phrase if self.kind == "two-step" else 0, first, self.c)


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]


def _add_columns(a: int, b: int) -> list[str]:
    da, db, carry, parts = _digits(a), _digits(b), 0, []
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        s = x + y + carry
        parts.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}")
        carry = s // 10
    return parts


def _sub_columns(a: int, b: int) -> list[str]:
    """a >= b; a borrow shows as "18-9=9" in the column that takes it and "5-1-4=0" in the
    next one."""
    da, db, borrow, parts = _digits(a), _digits(b), 0, []
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        take = x - borrow < y
        parts.append(f"{'1' if take else ''}{x}" + ("-1" if borrow else "") + f"-{y}={x + 10 * take - borrow - y}")
        borrow = int(take)
    return parts


def _mul_columns(a: int, d: int) -> list[str]:
    """a times the one-digit d."""
    carry, parts = 0, []
    for x in _digits(a):
        p = x * d + carry
        parts.append(f"{x}*{d}" + (f"+{carry}" if carry else "") + f"={p}")
        carry = p // 10
    return parts


def _columns(a: int, op: str, b: int) -> str:
    head = f"{a}{op}{b}: "
    done = f", so {a}{op}{b}={APPLY[op](a, b)}"
    if op == "+":
        return head + ", ".join(_add_columns(a, b)) + done
    if op == "-":
        return head + ", ".join(_sub_columns(a, b)) + done
    x, d = (b, a) if a < 10 else (a, b)  # x: the number worked column by column
    if d < 10:
        return head + ", ".join(_mul_columns(x, d)) + done
    ones, tens = d % 10, d // 10  # two two-digit numbers: x * ones + x * tens * 10
    p0, p1 = x * ones, x * tens * 10
    return (head + ", ".join(_mul_columns(x, ones)) + f", so {x}*{ones}={p0}; " + ", ".join(_mul_columns(x, tens))
            + f", so {x}*{tens}0={p1}; " + ", ".join(_add_columns(p0, p1)) + done)


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def draw(rng: random.Random) -> WordProblem:
    kind = rng.choice(KINDS)
    if kind == "two-step":
        story = rng.randrange(len(STORIES))
        _, op1, op2 = STORIES[story]
        if op1 == "*":
            a, b = _number(rng, 2), rng.randint(2, 9)
        else:
            a = _number(rng, 2)
            b = rng.randint(2, a - 1) if op1 == "-" else _number(rng, 2)
        x = APPLY[op1](a, b)
        c = rng.randint(1, x - 1) if op2 == "-" else _number(rng, 2)
        return WordProblem(kind, story, a, b, c)
    phrase = rng.randrange(len(PHRASES[kind]))
    if kind == "*":
        a, b = rng.choice([(_number(rng, 2), rng.randint(2, 9)), (_number(rng, 3), rng.randint(2, 9)),
                           (_number(rng, 2), _number(rng, 2))])
        if rng.random() < 0.5:
            a, b = b, a
        return WordProblem(kind, phrase, a, b)
    digits = rng.choice((2, 3))
    a, b = _number(rng, digits), _number(rng, digits)
    if kind == "-" and a < b:
        a, b = b, a
    return WordProblem(kind, phrase, a, b)


def split(seed: int, n_test: int, n_dev: int, n_train: int) -> tuple[list, list, list]:
    """(test, dev, train): no key (operand order aside) in two of them."""
    rng = random.Random(seed)
    seen: set = set()
    held: list[list[WordProblem]] = [[], []]
    for part, n in zip(held, (n_test, n_dev)):
        while len(part) < n:
            p = draw(rng)
            if p.key() not in seen:
                seen.add(p.key())
                part.append(p)
    train = []
    while len(train) < n_train:
        p = draw(rng)
        if p.key() not in seen:
            train.append(p)
    return held[0], held[1], train


def sft_row(p: WordProblem, t: ReasoningTemplate, working: str = "direct") -> dict:
    """Chat data: the prompt is the question (the chat template and the system prompt go
    around it); the completion opens the working-out tag itself. `working`: "direct"
    ("45+78=123") or "columns" (digit by digit, `column_working`)."""
    text = p.column_working if working == "columns" else p.working
    return {"prompt": p.question, "completion": t.reasoning_start + t.completion(text, str(p.answer)),
            "kind": p.kind}


def rl_row(p: WordProblem) -> dict:
    return {"prompt": p.question, "answer": str(p.answer), "kind": p.kind}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def reply_answer(text: str, t: ReasoningTemplate) -> str | None:
    """The answer a reply gives: between the solution tags when it is in the template's
    format, else its last number (so that a model that ignores the format, such as the
    imported one, is still scored on its arithmetic)."""
    tagged = t.extract_answer(text)
    if tagged is not None:
        return tagged.replace(",", "").strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None
