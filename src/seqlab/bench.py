"""`seqlab bench`: time seqlab's hot paths on this machine (no peers needed).

The side-by-side comparison with makemore, nanoGPT-style GPT-2 and Hugging Face
`generate` lives in benchmarks/bench_core.py; this is the quick self-check a
user runs to see what their machine does.
"""

from __future__ import annotations

import statistics
import time

import torch

from .config import ModelConfig, TrainConfig
from .errors import SeqlabError
from .models import build_model
from .sampling import DecodeRule, generate
from .engine import make_optimizer


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_bench(device: str = "cpu", repeats: int = 5, vocab: int = 32) -> dict:
    if repeats < 1:
        raise SeqlabError(f"--repeats must be >= 1, got {repeats}")
    dev = torch.device(device)
    cfg = ModelConfig(type="transformer", n_layer=4, n_head=4, n_embd=64, block_size=256, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg, vocab).to(dev)
    opt = make_optimizer(model, TrainConfig())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, vocab, (32, 64), generator=g).to(dev)
    y = torch.roll(x, -1, 1)

    def train_steps(n=10):
        for _ in range(n):
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    train_steps(3)
    step_s = _median_time(train_steps, repeats) / 10
    model.eval()
    gen = torch.Generator(device=dev)

    def sample():
        gen.manual_seed(0)
        generate(model, [[1]] * 64, 128, DecodeRule(), eos_id=-1, generator=gen)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sample()
    sample_s = _median_time(sample, repeats)
    return {
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": "transformer 4x4x64", "train_step_ms": round(step_s * 1e3, 3),
        "train_batch": "32 x 64", "sample_tokens_per_s": round(64 * 128 / sample_s),
        "sample_batch": "64 x 128 new tokens",
    }
