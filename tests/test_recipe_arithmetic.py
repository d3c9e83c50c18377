"""The arithmetic recipe: its data (answers, disjoint held-out set, template) and a
tiny end-to-end run of every stage."""

import json
import random

import pytest

from seqlab.errors import SeqlabError
from seqlab.post.template import ReasoningTemplate
from seqlab.recipes.arithmetic import ArithmeticConfig, run_arithmetic
from seqlab.recipes.arithmetic_data import Problem, draw_problem, pretrain_line, sft_row, split_problems


def test_problems_answers_and_text():
    assert Problem(23, "+", 45, 0).question == "What is 23 plus 45?"
    assert Problem(23, "-", 45, 1).question == "Subtract 45 from 23."
    assert Problem(23, "-", 45, 1).answer == -22
    assert Problem(27, "*", 6, 2).question == "27 * 6 = ?"
    assert pretrain_line(Problem(27, "*", 6, 0)) == "What is 27 times 6? 27*6=162"
    t = ReasoningTemplate()
    row = sft_row(Problem(89, "+", 42, 0), t)
    assert row == {"prompt": "What is 89 plus 42?<start_working_out>",
                   "completion": "89+42=131<end_working_out><SOLUTION>131</SOLUTION>"}
    assert t.extract_answer(row["completion"]) == "131"
    rng = random.Random(0)
    for _ in range(500):
        p = draw_problem(rng, digits=3)
        assert 100 <= p.a <= 999 and (2 <= p.b <= 9 if p.op == "*" else 100 <= p.b <= 999)
        assert p.answer == eval(f"{p.a}{p.op}{p.b}")


def test_held_out_set_is_disjoint_and_seeded():
    test, train = split_problems(3, 200, 5000)
    assert len({p.key() for p in test}) == 200
    assert not {p.key() for p in test} & {p.key() for p in train}
    assert split_problems(3, 200, 5000) == (test, train)
    assert split_problems(4, 200, 5000)[0] != test


def test_recipe_end_to_end_tiny(tmp_path):
    cfg = ArithmeticConfig(n_test=20, n_pretrain=300, n_sft=20, n_rl=50, pretrain_steps=20, sft_steps=3,
                           rl_minutes=0.02, n_layer=1, n_head=2, n_embd=16, group_size=2, prompts_per_step=2)
    logs = []
    result = run_arithmetic(tmp_path / "r", cfg, progress=False, log=logs.append)
    stages = result["stages"]
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    dpo = ["dpo"] if "dpo" in stages else []  # a tiny model may give no right/wrong pair
    assert list(stages) == ["pretrain", "sft", "grpo", "rejection", "ppo", *dpo]
    assert dpo or saved["notes"] == ["dpo skipped: the SFT model's samples gave no right/wrong pair"]
    for s in stages.values():
        assert 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s["format_rate"] <= 1.0
    assert saved["grpo_gain_points"] == round(100 * (stages["grpo"]["accuracy"] - stages["sft"]["accuracy"]), 1)
    assert (tmp_path / "r" / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "r" / "results.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == list(stages)
    test_prompts = {json.loads(x)["prompt"] for x in (tmp_path / "r" / "data" / "test.jsonl").read_text().splitlines()}
    rl_prompts = {json.loads(x)["prompt"] for x in (tmp_path / "r" / "data" / "rl.jsonl").read_text().splitlines()}
    assert len(test_prompts) == 20 and not test_prompts & rl_prompts
    # every RL stage stopped at its wall-clock budget, long before its step limit
    for alg in ("grpo", "rejection", "ppo"):
        assert 1 <= saved["stages"][alg]["steps"] < 100000


def test_recipe_resume_keeps_finished_stages(tmp_path):
    import shutil

    cfg = ArithmeticConfig(n_test=10, n_pretrain=200, n_sft=10, n_rl=20, pretrain_steps=10, sft_steps=2,
                           rl_minutes=0.01, n_layer=1, n_head=2, n_embd=16, group_size=2, prompts_per_step=2,
                           compare=["rejection"])
    first = run_arithmetic(tmp_path / "r", cfg, progress=False, log=lambda s: None)
    shutil.rmtree(tmp_path / "r" / "rejection")  # as if killed while running rejection sampling
    logs = []
    again = run_arithmetic(tmp_path / "r", cfg, progress=False, log=logs.append, resume=True)
    kept = [line.split(":")[0].strip() for line in logs if "kept from the earlier run" in line]
    assert kept == ["pretrain", "sft", "grpo"]
    for stage in ("pretrain", "sft", "grpo"):
        assert again["stages"][stage] == first["stages"][stage]
    assert (tmp_path / "r" / "rejection" / "best.safetensors").exists()
    with pytest.raises(SeqlabError, match="nothing to resume"):  # a typo in --out must not start afresh
        run_arithmetic(tmp_path / "typo", cfg, progress=False, log=lambda s: None, resume=True)
