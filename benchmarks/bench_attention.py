"""seqlab's native causal attention against torch's scaled_dot_product_attention (CPU, fp32).

    python benchmarks/bench_attention.py            # about a minute on a quiet 2-core machine

Same process, alternating, 2 threads. Per shape (B, H, T, D): forward + backward and forward
alone, median of 15 calls, best of two rounds; then a whole training step (forward, token
log-probs, backward) of a 4-layer, 4-head, 64-wide Transformer with each attention, best of
three rounds of 10-step medians. Prints a markdown table; results go in benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig
from seqlab.models import build_model, native
from seqlab.post.common import token_logprobs

SHAPES = [(64, 4, 66, 16), (32, 4, 64, 16), (64, 4, 16, 16), (8, 4, 256, 16), (16, 6, 128, 64),
          (8, 4, 256, 32), (4, 6, 512, 64)]
STEPS = [(64, 66, 64), (32, 64, 64), (16, 256, 128)]  # batch, tokens, width (4 layers, 4 heads)


def median_ms(fn, n: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def attention_row(B, H, T, D) -> str:
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, T, D)

    def sdpa(backward):
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if backward:
            y.backward(grad)

    def ours(backward):
        y = native.causal_attention(q, k, v)
        if backward:
            y.backward(grad)

    best = {}
    for _ in range(2):
        for name, fn in (("sdpa", sdpa), ("native", ours)):
            for backward in (True, False):
                if backward:
                    t = median_ms(lambda: fn(True))
                else:
                    with torch.no_grad():
                        t = median_ms(lambda: fn(False))
                key = (name, backward)
                best[key] = min(best.get(key, t), t)
    s, n = best[("sdpa", True)], best[("native", True)]
    sf, nf = best[("sdpa", False)], best[("native", False)]
    return (f"| {B}, {H}, {T}, {D} | {s:.2f} ms ({sf:.2f}) | {n:.2f} ms ({nf:.2f}) | "
            f"**{s / n:.2f}x** ({sf / nf:.2f}x) |")


def step_row(B, T, C) -> str:
    torch.manual_seed(0)
    m = build_model(ModelConfig(type="transformer", n_layer=4, n_head=4, n_embd=C, block_size=max(128, T),
                                dropout=0.0, bias=False), 41)
    ids = torch.randint(3, 41, (B, T + 1))
    weights = torch.randn(B, T)

    def step():
        logits, _ = m(ids[:, :-1])
        (-(token_logprobs(logits, ids[:, 1:]) * weights).mean()).backward()

    applies = native.attention_applies
    runs = {"native": [], "sdpa": []}
    try:
        for _ in range(3):
            native.attention_applies = applies
            runs["native"].append(median_ms(step, n=10))
            native.attention_applies = lambda q: False
            runs["sdpa"].append(median_ms(step, n=10))
    finally:
        native.attention_applies = applies
    s, n = min(runs["sdpa"]), min(runs["native"])
    return f"| {B} x {T}, width {C} | {s:.1f} ms | {n:.1f} ms | **{s / n:.2f}x** |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if native.load() is None:
        raise SystemExit("error: the native kernels could not be built (see the warning above)")
    print(f"torch {torch.__version__}, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| B, H, T, D | SDPA fwd + bwd (fwd) | native fwd + bwd (fwd) | SDPA / native |")
    print("|---|---:|---:|---:|")
    for shape in SHAPES:
        print(attention_row(*shape), flush=True)
    print("\n| training step | SDPA | native | SDPA / native |")
    print("|---|---:|---:|---:|")
    for shape in STEPS:
        print(step_row(*shape), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
