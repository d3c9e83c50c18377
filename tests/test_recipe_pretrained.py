"""`seqlab recipe arithmetic --base`: word problems with disjoint test/dev/train splits (no
operand-swapped twins), scoring of replies, and the recipe end to end on a tiny imported
chat model (base -> SFT priming -> GRPO with LoRA), resumable."""

from __future__ import annotations

import json

import pytest

from seqlab.cli import main
from seqlab.post.template import ReasoningTemplate
from seqlab.recipes.word_problems import KINDS, WordProblem, reply_answer, sft_row, split


def test_splits_are_disjoint_up_to_operand_order():
    test, dev, train = split(0, 300, 100, 3000)
    assert (len(test), len(dev), len(train)) == (300, 100, 3000)
    held = {p.key() for p in test} | {p.key() for p in dev}
    assert len(held) == 400
    assert not held & {p.key() for p in train}
    twins = {(p.kind, p.phrase, p.b, p.a, p.c) for p in test}  # every operand-swapped twin of a test problem
    assert not twins & {(p.kind, p.phrase, p.a, p.b, p.c) for p in train}
    assert {p.kind for p in test} == set(KINDS)
    assert split(0, 300, 100, 3000)[0] == test and split(1, 300, 100, 3000)[0] != test


def test_answers_and_working_are_right():
    assert WordProblem("+", 0, 234, 581).answer == 815
    assert WordProblem("-", 1, 92, 45).question == "Subtract 45 from 92."
    p = WordProblem("two-step", 2, 12, 4, 5)  # 12 boxes of 4 pens, 5 lost
    assert (p.answer, p.working) == (43, "12*4=48, 48-5=43")
    for q in split(3, 50, 0, 0)[0]:
        x = eval(q.working.split(", ")[-1].split("=")[0]) if q.kind != "two-step" else None  # noqa: S307
        assert x is None or x == q.answer
        assert q.answer >= 0
    t = ReasoningTemplate()
    row = sft_row(p, t)
    assert row["completion"] == "<start_working_out>12*4=48, 48-5=43<end_working_out><SOLUTION>43</SOLUTION>"
    assert reply_answer(row["completion"], t) == "43"


def test_column_working_is_true_step_by_step_and_written_as_on_paper():
    assert WordProblem("+", 0, 457, 386).column_working == "457+386: 7+6=13, 5+8+1=14, 4+3+1=8, so 457+386=843"
    assert WordProblem("-", 0, 586, 491).column_working == "586-491: 6-1=5, 18-9=9, 5-1-4=0, so 586-491=95"
    assert WordProblem("-", 0, 503, 78).column_working == "503-78: 13-8=5, 10-1-7=2, 5-1-0=4, so 503-78=425"
    assert WordProblem("*", 0, 7, 457).column_working == "7*457: 7*7=49, 5*7+4=39, 4*7+3=31, so 7*457=3199"
    assert WordProblem("*", 0, 73, 85).column_working == (
        "73*85: 3*5=15, 7*5+1=36, so 73*5=365; 3*8=24, 7*8+2=58, so 73*80=5840; "
        "5+0=5, 6+4=10, 3+8+1=12, 0+5+1=6, so 73*85=6205")
    assert WordProblem("two-step", 0, 77, 30, 66).column_working == (
        "77-30: 7-0=7, 7-3=4, so 77-30=47; 47+66: 7+6=13, 4+6+1=11, so 47+66=113")
    for q in split(5, 400, 0, 0)[0]:  # every step of every kind is a true statement
        for step in q.column_working.split("; "):
            cols = step.split(": ")[-1]
            for fact in cols.replace(", so ", ", ").split(", "):
                lhs, rhs = fact.split("=")
                assert eval(lhs) == int(rhs), (q, fact)  # noqa: S307
        assert q.column_working.endswith(f"={q.answer}")
    from seqlab.errors import SeqlabError
    from seqlab.recipes.pretrained import PretrainedRecipeConfig, working_preset

    with pytest.raises(SeqlabError, match="recipe working: expected 'direct' or 'columns', got 'cols'"):
        PretrainedRecipeConfig(working="cols")
    with pytest.raises(SeqlabError, match="got 'cols'"):  # a [recipe] table's value passes no argparse choices
        PretrainedRecipeConfig(**working_preset("cols"))
    row = sft_row(WordProblem("+", 0, 45, 78), ReasoningTemplate(), working="columns")
    assert row["completion"] == ("<start_working_out>45+78: 5+8=13, 4+7+1=12, so 45+78=123<end_working_out>"
                                 "<SOLUTION>123</SOLUTION>")


@pytest.mark.parametrize("reply, want", [
    ("<start_working_out>1+2=3<end_working_out><SOLUTION>3</SOLUTION>", "3"),
    ("The answer is 1,234.", "1234"),
    ("12 + 35 = 50", "50"),
    ("no idea", None),
    ("<SOLUTION>7</SOLUTION> and more text 9", "9"),  # not in the format: its last number
])
def test_reply_answer(reply, want):
    assert reply_answer(reply, ReasoningTemplate()) == want


transformers = pytest.importorskip("transformers")


def test_recipe_on_a_tiny_imported_model_end_to_end(tmp_path, capsys, monkeypatch):
    from test_import_hf import make_hf

    import seqlab.recipes.pretrained as recipe
    from seqlab.post.config import PostConfig as real_post

    make_hf("llama", tmp_path / "hf", max_position_embeddings=512)
    small = dict(n_test=12, n_dev=4, n_sft=8, n_rl=16, sft_steps=2, rl_minutes=0.03, group_size=2,
                 prompts_per_step=2, max_new_tokens=6, eval_batch=8, lora_rank=2)
    real = recipe.PretrainedRecipeConfig
    monkeypatch.setattr(recipe, "PretrainedRecipeConfig", lambda **kw: real(**{**small, **kw}))
    out = tmp_path / "r"
    args = ["recipe", "arithmetic", "--base", str(tmp_path / "hf"), "--out", str(out), "--json", "--quiet"]
    capsys.readouterr()
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got["stages"]) == {"base", "sft", "grpo"}
    for stage in got["stages"].values():
        assert 0.0 <= stage["test"] <= 1.0 and set(stage["per_kind"]) <= set(KINDS)
    saved = json.loads((out / "results.json").read_text())
    assert saved["stages"]["grpo"]["test"]["n"] == 12
    assert saved["stages"]["grpo"]["steps"] >= 1
    for stage in ("sft", "grpo"):  # both bound their activations' memory the same way
        assert json.loads((out / stage / "post_config.json").read_text())["micro_batch"] == 4
    assert (out / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "| grpo |" in (out / "results.md").read_text()
    rl = [json.loads(x) for x in (out / "data" / "rl.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (out / "data" / "test.jsonl").read_text().splitlines()]
    assert not {r["prompt"] for r in rl} & {r["prompt"] for r in test}
    # resume keeps every finished stage (the same numbers, nothing re-run)
    assert main(args + ["--resume"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["stages"] == got["stages"]
    # flags that do not apply with --base are refused in one line
    assert main(["recipe", "arithmetic", "--base", "smollm2x", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: smollm2x: no such folder or file")
    assert main(["recipe", "arithmetic", "--base", str(tmp_path / "hf"), "--compare", "ppo",
                 "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --compare does not apply with --base (the base model is pretrained already)"
    assert main(["recipe", "arithmetic", "--dtype", "bfloat16", "--out", str(tmp_path / "z")]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --dtype applies with --base (the pretrained model's SFT and GRPO)"
    # --dtype bfloat16: SFT and GRPO run with post.dtype = "bfloat16"
    seen = []
    monkeypatch.setattr(recipe, "PostConfig", lambda **kw: seen.append(kw["dtype"]) or real_post(**kw))
    b = ["recipe", "arithmetic", "--base", str(tmp_path / "hf"), "--out", str(tmp_path / "b"), "--quiet",
         "--dtype", "bfloat16"]
    assert main(b) == 0
    assert seen == ["bfloat16", "bfloat16"]
    # --working columns: the SFT examples work digit by digit, with the preset's settings
    assert main(["recipe", "arithmetic", "--working", "columns", "--out", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.strip() == \
        "error: --working applies with --base (the pretrained model's SFT and GRPO)"
    made = []
    monkeypatch.setattr(recipe, "PretrainedRecipeConfig",
                        lambda **kw: made.append(kw) or real(**{**kw, **small}))
    c = ["recipe", "arithmetic", "--base", str(tmp_path / "hf"), "--out", str(tmp_path / "c"), "--quiet",
         "--working", "columns"]
    assert main(c) == 0
    assert made[0]["working"] == "columns" and made[0]["max_new_tokens"] == 128 and made[0]["sft_steps"] == 120
    sft = [json.loads(x) for x in (tmp_path / "c" / "data" / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == small["n_sft"]
    for row in sft:
        working = row["completion"].split("<start_working_out>")[1].split("<end_working_out>")[0]
        assert ", so " in working and ": " in working  # "45+78: 5+8=13, 4+7+1=12, so 45+78=123"
