"""Task generators and verifiers (issue: the makemore math experiments)."""

import math

import pytest

from seqlab.data.tasks import BUILTIN, fib2_line, get_task, make_lines, resolve_position
from seqlab.errors import SeqlabError


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_generator_output_passes_its_verifier(name):
    task = BUILTIN[name]
    lines = make_lines(task, 300, seed=1)
    assert all(task.check(s) == (True, True) for s in lines)
    assert len(set(lines)) > 250  # random, not one repeated string
    assert make_lines(task, 20, seed=1) == lines[:20]  # seeded


COUNTEREXAMPLES = {
    # (string, expected (wellformed, ok))
    "rule-13-22": [("0" * 12 + "1" + "0" * 8 + "0" + "0" * 9, (True, False)),  # 13th=1, 22nd=0
                   ("0" * 29, (False, False)), ("0" * 30 + "2", (False, False))],
    "rule-18-47": [("0" * 17 + "1" + "0" * 40, (True, False))],
    "rule-18-n20": [("0" * 17 + "1" + "0" * 42, (True, False))],  # n=60: position 40 is 0
    "rule-last2": [("0" * 49 + "1", (True, False)), ("0" * 48 + "11", (True, True))],
    "rule-three": [("0" * 3 + "1" + "0" * 56, (True, False))],
    "rule-three-neg": [("0" * 3 + "1" + "0" * 56, (True, False))],
    "unique-2": [("0101010101", (True, False)), ("0120120101", (True, False)), ("012", (False, False))],
    "zero-or-two-2s": [("2" + "0" * 30, (True, False)), ("222" + "0" * 30, (True, False)),
                       ("22" + "0" * 30, (True, True)), ("0" * 30, (True, True))],
    "fibonacci": [("1,2,3,5,8,13,22", (True, False)), ("1,2,3,5,8,13", (False, False)),
                  ("1,2,3,5,8,13,21", (True, True)), ("01,2,3,5,8,13,21", (True, False)),
                  ("1,2,3,5,8,13,2a", (False, False))],
    "fibonacci-2": [("521,142,663,679,14", (True, False)), ("521,142,663,679", (False, False)),
                    ("521,142,663,976,13", (True, False))],
    "board-4-5": [("1" + "0" * 3 + "1" + "0" * 59, (True, False)),  # (0,0)-(0,4): d^2 = 16
                  ("1" + "0" * 27 + "1" + "0" * 35, (True, False)),  # (0,0)-(3,4): d^2 = 25
                  ("1" + "0" * 26 + "1" + "0" * 36, (True, True)),  # (0,0)-(3,3): d^2 = 18 is fine
                  ("0" * 63, (False, False))],
}


@pytest.mark.parametrize("name", sorted(COUNTEREXAMPLES))
def test_hand_made_counterexamples(name):
    task = BUILTIN[name]
    for s, expected in COUNTEREXAMPLES[name]:
        assert task.check(s) == expected, s


def test_lecture_fibonacci_part_2_lines():
    lecture = ["521,142,663,679,13", "248,602,750,32551,33301", "855,244,1099,41551,",
               "27,881,907,95591,96", "738,518,1256,55491,567", "686,854,1540,556552,558092"]
    for line in lecture:
        x1, x2 = map(int, line.split(",")[:2])
        assert fib2_line(x1, x2) == line
        assert BUILTIN["fibonacci-2"].check(line) == (True, True)


def test_position_conventions():
    # the lecture counts from 1; n-20 is position n-20; -28 is s[-28]
    assert resolve_position("13", 30) == 12
    assert resolve_position("n-20", 60) == 39
    assert resolve_position("-28", 60) == 32
    s = "".join(str(i % 10) for i in range(60))
    assert s[resolve_position("-28", 60)] == s[-28]


def test_overlapping_equalities_are_all_satisfied():
    # with n = 66, s[-28] is the 39th digit, tied to the 18th by another rule
    task = BUILTIN["rule-three-neg"]
    lines = [s for s in make_lines(task, 3000, seed=0) if len(s) == 66]
    assert lines and all(task.check(s)[1] for s in lines)


def test_positions_task_options_and_errors():
    task = get_task("positions", ["2=5", "1=n"], "6-8")
    lines = make_lines(task, 100, 0)
    assert all(6 <= len(s) <= 8 and s[1] == s[4] and s[0] == s[-1] for s in lines)
    with pytest.raises(SeqlabError, match="outside strings of length"):
        get_task("positions", ["2=50"], "6-8")
    with pytest.raises(SeqlabError, match="expected A=B"):
        get_task("positions", ["2"], "6-8")
    with pytest.raises(SeqlabError, match="needs at least one --equal"):
        get_task("positions")


def test_entropy_floor_hand_computed():
    # positions with one tie on lengths 30..40: H = ln 11 + (n - 1) ln 2; tokens = n + 1
    expect = (math.log(11) + 34 * math.log(2)) / 36  # mean n = 35, mean (n-1) = 34
    assert BUILTIN["rule-13-22"].entropy_floor() == pytest.approx(expect, rel=1e-12)
    # unique-2 for the single length 10 would be (ln 10 + 9 ln 2) / 11; check the formula's pieces
    ns = range(10, 16)
    h = sum(math.log(6) + math.log(n) + (n - 1) * math.log(2) for n in ns) / 6
    assert BUILTIN["unique-2"].entropy_floor() == pytest.approx(h / 13.5)
    assert BUILTIN["board-4-5"].entropy_floor is None
