"""Reward functions: built-ins by hand, None handling, weights, user functions, errors."""

import pytest

from seqlab.errors import SeqlabError
from seqlab.post.rewards import build_rewards
from seqlab.post.template import ReasoningTemplate

T = ReasoningTemplate()
GOOD = "2+2 is 4<end_working_out><SOLUTION>4</SOLUTION>"
NEAR = "x<end_working_out><SOLUTION>4.3</SOLUTION>"
FAR = "x<end_working_out><SOLUTION>9</SOLUTION>"
BAD = "I think 4"
JUNK = "x<end_working_out><SOLUTION>four</SOLUTION>"


def one(name, completions, answers=None):
    rs = build_rewards([name], None, T)
    cols = {"answer": answers} if answers is not None else {}
    return rs(["q"] * len(completions), completions, cols)[1][name]


def test_format_rewards():
    assert one("format_exact", [GOOD, BAD, GOOD + " trailing"]) == [3.0, 0.0, 0.0]
    # per tag: +0.5 when seen exactly once, -1 otherwise (3 tags)
    assert one("format_approx", [GOOD, BAD]) == [1.5, -3.0]


def test_answer_rewards():
    assert one("answer_exact", [GOOD, FAR, BAD], ["4", "4", "4"]) == [3.0, 0.0, -1.0]
    # 4.3 / 4 = 1.075 -> within 10%; 9 / 4 -> wrong; "four" -> unreadable
    assert one("answer_distance", [GOOD, NEAR, FAR, JUNK, BAD], ["4"] * 5) == [2.0, 1.5, -1.0, -2.5, -2.5]


def test_weights_and_none_are_excluded(tmp_path, monkeypatch):
    (tmp_path / "myrew.py").write_text(
        "def picky(prompts, completions, **kw):\n"
        "    return [None if c.startswith('x') else 1.0 for c in completions]\n"
        "def boom(prompts, completions, **kw):\n"
        "    return [1 / 0 if c == 'bad' else 0.0 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rs = build_rewards(["format_exact", "myrew:picky"], [0.5, 2.0], T)
    totals, per_fn = rs(["q", "q"], [GOOD, NEAR], {})
    assert per_fn["myrew:picky"] == [1.0, None]
    assert totals == [0.5 * 3.0 + 2.0 * 1.0, 0.5 * 3.0]  # None left out of the sum
    rs = build_rewards(["myrew:boom"], None, T)
    with pytest.raises(SeqlabError, match=r"reward function myrew:boom raised ZeroDivisionError.* sample 1: 'bad'"):
        rs(["q", "q"], ["ok", "bad"], {})


def test_config_errors():
    with pytest.raises(SeqlabError, match="unknown reward 'nope'"):
        build_rewards(["nope"], None, T)
    with pytest.raises(SeqlabError, match="2 weights for 1 rewards"):
        build_rewards(["format_exact"], [1.0, 2.0], T)
    rs = build_rewards(["format_exact"], None, T)
    rs.fns[0] = lambda p, c, **k: [1.0]
    with pytest.raises(SeqlabError, match="one value per completion"):
        rs(["q", "q"], ["a", "b"], {})


def test_template_extracts_answer():
    assert T.extract_answer(GOOD) == "4"
    assert T.extract_answer(BAD) is None
    assert T.prompt("What is 2+2?") == "What is 2+2?<start_working_out>"
    assert T.completion("2+2=4", "4") == GOOD.replace("2+2 is 4", "2+2=4")
