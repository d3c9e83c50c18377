"""Every path on a CUDA GPU (`pytest -m gpu`; skipped where CUDA is absent, as in CI).

The same numbers as on the CPU where the arithmetic allows it: forward passes and
gradients of every model in the zoo; greedy decoding token for token; sampling with a
CPU generator (the sampler draws its uniforms on the generator's device, so a seed means
the same draws on either device). Then every verb with --device cuda: train (bf16
autocast) and resume, sample, eval, heatmap, the six post-training algorithms (one of
them measured to learn), LoRA, the quickstart, the arithmetic recipe and PatternBoost
discovery."""

import json
import math
import os

import pytest
import torch

# SEQLAB_TEST_DEVICE=cpu runs these on the CPU (checks the tests themselves where no GPU is)
DEV = os.environ.get("SEQLAB_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEV.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from seqlab.checkpoint import load_model  # noqa: E402
from seqlab.cli import main  # noqa: E402
from seqlab.config import ModelConfig, run_config_from_dict  # noqa: E402
from seqlab.models import build_model  # noqa: E402
from seqlab.post.config import load_post_config  # noqa: E402
from seqlab.sampling import DecodeRule, generate  # noqa: E402
from seqlab.train import train  # noqa: E402

CUDA = torch.device(DEV)


@pytest.fixture(autouse=True)
def full_float32():
    """float32 means float32 here (TF32 matmuls would differ from the CPU by ~1e-3)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # noqa: E501
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


ZOO = [dict(type="bigram"), dict(type="mlp", n_embd=16, block_size=8), dict(type="rnn", n_embd=16),
       dict(type="lstm", n_embd=16), dict(type="gru", n_embd=16),
       dict(type="transformer", n_layer=2, n_head=4, n_embd=32, block_size=24),
       dict(type="transformer", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=24, pos="rope",
            norm="rmsnorm", mlp="swiglu")]


@pytest.mark.parametrize("spec", ZOO, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_forward_and_gradients_match_the_cpu(spec):
    torch.manual_seed(0)
    cpu = build_model(ModelConfig(**{"block_size": 24, "dropout": 0.0, **spec}), 20)
    gpu = build_model(ModelConfig(**{"block_size": 24, "dropout": 0.0, **spec}), 20)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    x = torch.randint(3, 20, (8, 16))
    y = torch.roll(x, -1, 1)
    lc, loss_c = cpu(x, y)
    lg, loss_g = gpu(x.to(CUDA), y.to(CUDA))
    loss_c.backward()
    loss_g.backward()
    assert rel(lg.cpu(), lc) < 1e-5
    assert abs(loss_g.item() - loss_c.item()) < 1e-5
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        assert rel(pg.grad.cpu(), pc.grad) < 1e-4, name


@pytest.mark.parametrize("spec", [ZOO[4], ZOO[5], ZOO[6]], ids=["gru", "transformer", "llama-style"])
def test_decoding_matches_the_cpu(spec):
    torch.manual_seed(1)
    cpu = build_model(ModelConfig(**{"block_size": 24, "dropout": 0.0, **spec}), 20).eval()
    gpu = build_model(ModelConfig(**{"block_size": 24, "dropout": 0.0, **spec}), 20)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA).eval()
    prompts = [[1, 5, 6], [1, 7], [1], [1, 9, 9, 9]] * 4
    greedy = DecodeRule(temperature=0.0)
    a = generate(cpu, prompts, 16, greedy, eos_id=2, pad_id=0)
    b = generate(gpu, prompts, 16, greedy, eos_id=2, pad_id=0)
    assert torch.equal(a.tokens, b.tokens.cpu())
    # sampling: a CPU generator gives both devices the same uniforms; a row may still part
    # where a uniform falls within float rounding of a bin edge, so most rows agree exactly
    rule = DecodeRule(temperature=1.0)
    a = generate(cpu, prompts * 4, 16, rule, eos_id=2, pad_id=0, generator=torch.Generator().manual_seed(5))
    b = generate(gpu, prompts * 4, 16, rule, eos_id=2, pad_id=0, generator=torch.Generator().manual_seed(5))
    same = (a.tokens == b.tokens.cpu()).all(1).float().mean()
    assert same >= 0.9
    assert rel(b.sampling_logprobs.cpu()[:4], a.sampling_logprobs[:4]) < 1e-4 or same < 1


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    import random

    rng = random.Random(0)
    syll = ["ka", "ri", "mo", "an", "el", "la", "to", "sa", "ne", "vi"]
    p = tmp_path_factory.mktemp("gpu") / "words.txt"
    p.write_text("\n".join("".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(2000)) + "\n")
    return p


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_train_resume_sample_eval_heatmap_with_device_cuda(tmp_path, words, capsys):
    from seqlab.data.lines import encode_lines, read_lines
    from seqlab.train import evaluate

    run = tmp_path / "run"
    common = ["train", "--data", str(words), "--out", str(run), "--model", "transformer", "--n-layer", "2",
              "--n-head", "4", "--n-embd", "64", "--device", DEV, "--json", "--quiet",
              "--eval-interval", "100", "--checkpoint-interval", "100"]
    first = _json(capsys, common + ["--steps", "200"])
    assert first["step"] == 200
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("train_loss")]) for r in rows[1:] if r.split(",")[header.index("train_loss")]]
    assert losses[-1] < 0.7 * losses[0]  # it learns (bf16 autocast: dtype auto on a GPU)
    again = _json(capsys, ["train", "--out", str(run), "--resume", "--steps", "300", "--device", DEV, "--json",
                           "--quiet"])
    assert again["step"] == 300
    # the GPU-trained weights load on the CPU and score the same validation loss (bf16 vs fp32)
    model, tok, cfg = load_model(run, "best")
    data = encode_lines(read_lines(words), tok, block_size=model.max_len)
    val = evaluate(model, data, tok.pad_id, torch.device("cpu"))
    assert math.isfinite(val) and val < math.log(tok.vocab_size)
    s = _json(capsys, ["sample", str(run), "--n", "50", "--device", DEV, "--seed", "3", "--json"])
    assert len(s["samples"]) == 50 and sum(len(x) > 0 for x in s["samples"]) >= 45
    e = _json(capsys, ["eval", str(run), "--task", "positions",
                       "--equal", "1=2", "--length", "2-8", "--n", "64", "--device", DEV, "--json"])
    assert e["lines"] == 64 and 0.0 <= e["success_rate"] <= 1.0 and math.isfinite(e["val_loss"])
    h = _json(capsys, ["heatmap", str(run), "--input", "kari", "--out", str(tmp_path / "h.png"), "--avg-samples",
                       "16", "--device", DEV, "--json"])
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG" and h["layers"] == 2 and h["heads"] == 4


@pytest.fixture(scope="module")
def post_bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpupost")
    data = d / "base.txt"
    data.write_text("\n".join(f"{a}+{b}={a + b}" for a in range(10) for b in range(10)) + "\n")
    cfg = run_config_from_dict({"data": {"path": str(data)},
                                "model": {"type": "transformer", "n_layer": 1, "n_head": 2, "n_embd": 16,
                                          "block_size": 24},
                                "train": {"steps": 20, "batch_size": 16, "eval_interval": 20}})
    train(cfg, d / "base", progress=False)
    from conftest import write_post_data

    return d, write_post_data(d, "gpurewards")


def _post(d, data, algorithm, out, **kw):
    from seqlab.post import get_runner

    over = {"policy": str(d / "base"), "data": str(data[algorithm]), "out": str(out), "steps": 3,
            "batch_size": 8, "lr": 1e-2, "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 6,
            "rewards": ["gpurewards:count_ones"], "rounds": 1, "reward_threshold": -1.0, "kl_beta": 0.05,
            "minibatches": 1, "ppo_epochs": 1, "device": DEV, **kw}
    return get_runner(algorithm)(load_post_config(None, over), progress=False)


@pytest.mark.parametrize("algorithm", ["sft", "dpo", "rm", "grpo", "rejection", "ppo"])
@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_post_algorithms_run_on_cuda(post_bases, algorithm, dtype, tmp_path, monkeypatch):
    d, data = post_bases
    monkeypatch.syspath_prepend(str(d))
    out = tmp_path / algorithm
    result = _post(d, data, algorithm, out, dtype=dtype)
    assert result["step"] == 3 and math.isfinite(result["loss"])
    before, _, _ = load_model(d / "base")
    after, _, _ = load_model(out)  # saved from the GPU, loaded on the CPU
    moved = [n for (n, p), q in zip(after.named_parameters(), before.parameters()) if not torch.equal(p, q)]
    assert moved
    assert len((out / "metrics.csv").read_text().splitlines()) == 4


def test_grpo_on_cuda_samples_what_the_cpu_samples_and_learns(post_bases, tmp_path, monkeypatch):
    """The first rollout is the CPU's (same seed, CPU generator), and 30 updates raise the
    reward ('1's per completion) well past noise, as on the CPU (test_post_run)."""
    d, data = post_bases
    monkeypatch.syspath_prepend(str(d))
    cpu = _post(d, data, "grpo", tmp_path / "cpu", steps=1, device="cpu", kl_beta=0.0)
    gpu = _post(d, data, "grpo", tmp_path / "gpu", steps=1, kl_beta=0.0)
    first = lambda p: [json.loads(x) for x in (p / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["completion"] for r in first(tmp_path / "cpu")] == [r["completion"] for r in first(tmp_path / "gpu")]
    assert abs(cpu["reward"] - gpu["reward"]) < 1e-6
    out = tmp_path / "learns"
    _post(d, data, "grpo", out, steps=30, batch_size=16, group_size=8, prompts_per_step=4, kl_beta=0.0, seed=3)
    import csv

    with open(out / "metrics.csv") as f:
        rewards = [float(r["reward"]) for r in csv.DictReader(f)]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.5, rewards


def test_lora_grpo_on_cuda(post_bases, tmp_path, monkeypatch):
    d, data = post_bases
    monkeypatch.syspath_prepend(str(d))
    out = tmp_path / "lora"
    result = _post(d, data, "grpo", out, lora_rank=4)
    assert result["step"] == 3 and (out / "adapter.safetensors").exists() and (out / "best.safetensors").exists()


def test_quickstart_recipe_and_discovery_on_cuda(tmp_path, capsys):
    q = _json(capsys, ["quickstart", "--out", str(tmp_path / "qs"), "--steps", "300", "--device", DEV,
                       "--json", "--quiet"])
    assert q["step"] == 300 and q["val_loss"] < 2.0 and q["wellformed_rate"] > 0.5
    from seqlab.recipes.arithmetic import ArithmeticConfig, run_arithmetic

    cfg = ArithmeticConfig(n_test=20, n_pretrain=300, n_sft=20, n_rl=50, pretrain_steps=20, sft_steps=3,
                           rl_minutes=0.02, n_layer=1, n_head=2, n_embd=16, group_size=2, prompts_per_step=2,
                           compare=["rejection"], device=DEV)
    r = run_arithmetic(tmp_path / "r", cfg, progress=False, log=lambda s: None)
    assert {"pretrain", "sft", "grpo", "rejection"} <= set(r["stages"])
    from seqlab.discover.patternboost import PatternBoostConfig, run_patternboost
    from seqlab.discover.problems import get_problem

    tiny = PatternBoostConfig(first_steps=30, steps=10, samples=48, moves_per_start=200, n_layer=1, n_embd=32,
                              grpo_steps=2, grpo_group=4, init_fraction=0.2, device=DEV)
    log = []
    res = run_patternboost(get_problem("golomb", 6), tmp_path / "pb", seconds=12, seed=0, workers=1, cfg=tiny,
                           progress=log.append, use_grpo=True)
    assert any(e["generation"] >= 1 for e in log) and res.best
    model, _, _ = load_model(tmp_path / "pb" / "gen-001" / "model", "last")
    assert model.max_len > 0


def test_chat_and_sample_chat_on_cuda_reply_what_the_cpu_replies(tmp_path, capsys, monkeypatch):
    """An imported Llama-family checkpoint: `sample --chat` and the streamed `chat` give the
    CPU's greedy replies token for token."""
    import io
    import sys

    pytest.importorskip("transformers")
    from test_import_hf import make_hf

    from seqlab.interop.importer import import_model

    make_hf("llama", tmp_path / "hf", max_position_embeddings=256)
    import_model(str(tmp_path / "hf"), tmp_path / "run")
    replies = {}
    for dev in ("cpu", DEV):
        capsys.readouterr()
        payload = _json(capsys, ["sample", str(tmp_path / "run"), "--chat", "What is 12 + 35?", "--temperature", "0",
                                 "--max-new-tokens", "12", "--n", "1", "--device", dev, "--json"])
        monkeypatch.setattr(sys, "stdin", io.StringIO("What is 12 + 35?\nAnd 3 + 4?\n"))
        assert main(["chat", str(tmp_path / "run"), "--temperature", "0", "--max-new-tokens", "10",
                     "--device", dev]) == 0
        replies[dev] = (payload["samples"], capsys.readouterr().out)
    assert replies["cpu"] == replies[DEV] and replies["cpu"][0][0]
