"""Distillation (post/distill.py): the three divergences against hand-computed values, and
both modes moving a student toward a toy teacher (measured apart from the training loop)."""

import json
import math

import pytest
import torch

from seqlab.checkpoint import load_model
from seqlab.config import run_config_from_dict
from seqlab.errors import SeqlabError
from seqlab.post.config import load_post_config
from seqlab.post.distill import distill_loss, run_distill, token_divergence
from seqlab.train import train

P_T, P_S = [0.7, 0.2, 0.1], [0.4, 0.4, 0.2]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def logits(p):
    return torch.tensor([[[math.log(x) + 3.0 for x in p]]])  # any shift: softmax gives p back


def test_divergences_equal_their_hand_computed_values():
    t, s = logits(P_T), logits(P_S)
    assert float(token_divergence(t, s, "forward")) == pytest.approx(kl(P_T, P_S), abs=1e-6)
    assert float(token_divergence(t, s, "reverse")) == pytest.approx(kl(P_S, P_T), abs=1e-6)
    for beta in (0.5, 0.1, 0.9):
        m = [beta * a + (1 - beta) * b for a, b in zip(P_T, P_S)]
        want = beta * kl(P_T, m) + (1 - beta) * kl(P_S, m)
        assert float(token_divergence(t, s, "jsd", beta)) == pytest.approx(want, abs=1e-6)
    assert kl(P_T, P_S) != pytest.approx(kl(P_S, P_T), abs=1e-3)  # the example tells forward from reverse
    with pytest.raises(ValueError):
        token_divergence(t, s, "jsd", 1.0)


def test_loss_is_a_token_mean_and_its_gradient_pulls_the_student_to_the_teacher():
    t = torch.cat([logits(P_T), logits(P_S)], 1)  # (1, 2, 3): two positions
    s = torch.cat([logits(P_S), logits(P_S)], 1).requires_grad_(True)
    mask = torch.tensor([[1.0, 0.0]])  # the second position does not count
    loss = distill_loss(t, s, mask, "forward")
    assert loss.item() == pytest.approx(kl(P_T, P_S), abs=1e-6)
    loss.backward()
    # d KL(p_T || softmax(z)) / dz = p_S - p_T: the step z -= lr * grad moves p_S toward p_T
    assert torch.allclose(s.grad[0, 0], torch.tensor(P_S) - torch.tensor(P_T), atol=1e-6)
    assert torch.equal(s.grad[0, 1], torch.zeros(3))
    assert distill_loss(t, s, torch.zeros(1, 2)).item() == 0.0  # an empty mask: 0, not NaN


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A teacher trained on words, and a student of another shape with the same tokenizer,
    trained far less."""
    from conftest import tiny_words

    d = tmp_path_factory.mktemp("distill")
    data = d / "words.txt"
    data.write_text("\n".join(tiny_words(800)) + "\n")
    for name, steps, width in (("teacher", 300, 64), ("student", 5, 32)):
        cfg = run_config_from_dict({"data": {"path": str(data)},
                                    "model": {"type": "transformer", "n_layer": 2, "n_head": 4, "n_embd": width,
                                              "block_size": 24, "dropout": 0.0},
                                    "train": {"steps": steps, "batch_size": 32, "lr": 3e-3, "eval_interval": 1000,
                                              "seed": 1}})
        train(cfg, d / name, progress=False)
    prompts = d / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": w[:1]}) for w in tiny_words(40, seed=5)) + "\n")
    return d


def kl_to_teacher(pair, student_run, on: str = "student") -> float:
    """KL(teacher || student) per token on the student's own samples, or on the teacher's
    (fixed seed, not the seed training drew with)."""
    from seqlab.post.data import completion_batch
    from seqlab.sampling import DecodeRule, generate

    teacher, tok, _ = load_model(pair / "teacher")
    student, _, _ = load_model(student_run)
    prompts = [tok.encode_prompt(w) for w in "krmaelts"] * 8  # first letters, as the training prompts
    gen = generate(student if on == "student" else teacher, prompts, 12, DecodeRule(temperature=1.0), tok.eos_id, tok.pad_id,
                   generator=torch.Generator().manual_seed(7))
    ids, mask, _ = completion_batch(prompts, gen, tok.pad_id)
    with torch.no_grad():
        return float(distill_loss(teacher(ids[:, :-1])[0], student(ids[:, :-1])[0], mask, "forward"))


@pytest.mark.parametrize("mode,divergence", [("onpolicy", "forward"), ("onpolicy", "jsd"), ("onpolicy", "reverse"),
                                             ("offpolicy", "forward")])
def test_distillation_brings_the_student_to_the_teacher(pair, mode, divergence):
    out = pair / f"{mode}-{divergence}"
    cfg = load_post_config(None, {"policy": str(pair / "student"), "teacher": str(pair / "teacher"),
                                  "data": str(pair / "prompts.jsonl"), "out": str(out), "mode": mode,
                                  "divergence": divergence, "steps": 60, "batch_size": 16, "lr": 1e-2 if mode == "onpolicy" else 3e-3,
                                  "max_new_tokens": 12, "group_size": 4, "temperature": 1.0})
    result = run_distill(cfg, progress=False)
    assert result["step"] == 60 and math.isfinite(result["loss"])
    # each mode on the distribution it learns on: on-policy the student's own samples,
    # off-policy the teacher's (off-policy does not promise the first: exposure bias)
    on = "student" if mode == "onpolicy" else "teacher"
    before, after = kl_to_teacher(pair, pair / "student", on), kl_to_teacher(pair, out, on)
    assert after < 0.6 * before, (before, after)
    lines = (out / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert {"loss", "kl", "completion_len"} <= set(header)
    if mode == "onpolicy":  # the logged KL is the forward KL on the step's tokens: the loss itself for "forward"
        row = dict(zip(header, lines[-1].split(",")))
        same = float(row["kl"]) == pytest.approx(float(row["loss"]), rel=1e-5)
        assert same if divergence == "forward" else not same
    assert json.loads((out / "samples.jsonl").read_text().splitlines()[0])["completion"] is not None
    if mode == "offpolicy":  # the teacher's completions are learned with their end token: the student stops
        assert finished_rate(out) > 0.5 * finished_rate(pair / "teacher"), (finished_rate(out), finished_rate(pair / "teacher"))


def finished_rate(run) -> float:
    from seqlab.sampling import DecodeRule, generate

    model, tok, _ = load_model(run)
    gen = generate(model, [tok.encode_prompt(w) for w in "krmaelts"] * 8, 12, DecodeRule(temperature=1.0), tok.eos_id,
                   tok.pad_id, generator=torch.Generator().manual_seed(3))
    return float(gen.finished.float().mean())


def test_distillation_needs_a_shared_tokenizer_and_a_teacher(pair, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("\n".join(["xyz", "zyx", "qqq"] * 20) + "\n")
    cfg = run_config_from_dict({"data": {"path": str(other)}, "model": {"type": "bigram"},
                                "train": {"steps": 2, "batch_size": 4, "eval_interval": 1000}})
    train(cfg, tmp_path / "alien", progress=False)
    base = {"policy": str(pair / "student"), "data": str(pair / "prompts.jsonl"), "out": str(tmp_path / "o"),
            "steps": 1}
    with pytest.raises(SeqlabError, match="another tokenizer"):
        run_distill(load_post_config(None, {**base, "teacher": str(tmp_path / "alien")}), progress=False)
    with pytest.raises(SeqlabError, match="post.teacher"):
        run_distill(load_post_config(None, base), progress=False)
    assert not (tmp_path / "o").exists()  # nothing written before the error
