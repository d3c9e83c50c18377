"""seqlab's native causal attention against torch's scaled_dot_product_attention (CPU, fp32).

    python benchmarks/bench_attention.py            # about a minute on a quiet 2-core machine

Each contender runs in a process of its own (`--child native|sdpa`), 2 threads; the rounds
alternate them (the order flips every round). Per shape (B, H, T, D): forward + backward and
forward alone, median of 15 calls; then a whole training step (forward, token log-probs,
backward) of a 4-layer, 4-head Transformer with each attention, median of 10 steps. A figure
is the best of --rounds (default 3) such medians. Prints a markdown table (results go in
benchmarks/results.md); --out keeps the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def attention_times(name: str, B, H, T, D) -> tuple[float, float]:
    """(fwd + bwd, fwd) median ms of one attention call at this shape."""
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, T, D)
    attend = native.causal_attention if name == "native" else (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def both():
        attend(q, k, v).backward(grad)

    with_bwd = median_ms(both)
    with torch.no_grad():
        fwd = median_ms(lambda: attend(q, k, v))
    return with_bwd, fwd


def step_time(name: str, B, T, C) -> float:
    torch.manual_seed(0)
    m = build_model(ModelConfig(type="transformer", n_layer=4, n_head=4, n_embd=C, block_size=max(128, T),
                                dropout=0.0, bias=False), 41)
    ids = torch.randint(3, 41, (B, T + 1))
    weights = torch.randn(B, T)
    if name == "sdpa":  # the model's attention falls back to torch's SDPA
        native.attention_applies = lambda q: False

    def step():
        logits, _ = m(ids[:, :-1])
        (-(token_logprobs(logits, ids[:, 1:]) * weights).mean()).backward()

    return median_ms(step, n=10)


def child(name: str, threads: int) -> int:
    torch.set_num_threads(threads)
    if native.load() is None:
        raise SystemExit("error: the native kernels could not be built (see the warning above)")
    out = {"attention": [attention_times(name, *shape) for shape in SHAPES],
           "step": [step_time(name, *shape) for shape in STEPS]}
    print("@@result " + json.dumps(out), flush=True)
    return 0


def run_child(name: str, threads: int) -> dict:
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name, "--threads", str(threads)],
                       capture_output=True, text=True)
    for line in p.stdout.splitlines():
        if line.startswith("@@result "):
            return json.loads(line.removeprefix("@@result "))
    raise SystemExit(f"error: the {name} process failed: {p.stderr[-2000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="write the raw numbers (every round) as JSON here")
    p.add_argument("--child", choices=["native", "sdpa"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.threads)
    runs = {"native": [], "sdpa": []}
    for r in range(args.rounds):
        for name in (("native", "sdpa") if r % 2 == 0 else ("sdpa", "native")):
            runs[name].append(run_child(name, args.threads))

    def best(name, part, i, j=None):
        vals = [run[part][i] if j is None else run[part][i][j] for run in runs[name]]
        return min(vals)

    print(f"torch {torch.__version__}, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"best of {args.rounds} rounds, each contender in its own process\n")
    print("| B, H, T, D | SDPA fwd + bwd (fwd) | native fwd + bwd (fwd) | SDPA / native |")
    print("|---|---:|---:|---:|")
    for i, (B, H, T, D) in enumerate(SHAPES):
        s, n = best("sdpa", "attention", i, 0), best("native", "attention", i, 0)
        sf, nf = best("sdpa", "attention", i, 1), best("native", "attention", i, 1)
        print(f"| {B}, {H}, {T}, {D} | {s:.2f} ms ({sf:.2f}) | {n:.2f} ms ({nf:.2f}) | "
              f"**{s / n:.2f}x** ({sf / nf:.2f}x) |")
    print("\n| training step | SDPA | native | SDPA / native |")
    print("|---|---:|---:|---:|")
    for i, (B, T, C) in enumerate(STEPS):
        s, n = best("sdpa", "step", i), best("native", "step", i)
        print(f"| {B} x {T}, width {C} | {s:.1f} ms | {n:.1f} ms | **{s / n:.2f}x** |")
    if args.out:
        Path(args.out).write_text(json.dumps({"shapes": SHAPES, "steps": STEPS, "runs": runs,
                                              "torch": torch.__version__, "threads": args.threads}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
