"""How fast can this machine stream SmolLM2-135M's float32 weights? (issue 17's batch-1 target)

    python benchmarks/bench_weight_bandwidth.py [--threads 1] [--rounds 5]

Decoding one token reads every weight once, so bytes per second bound tokens per second at
batch 1. Times, best of --rounds: a sum over 540 MB (one read of the float32 model's bytes),
and x @ W.T over SmolLM2's own weight shapes (30 layers of q/k/v 960x576, o 576x576, gate/up
3072x576, down 576x1536, and the 49,152x576 head) for 1 and 8 rows of x: the matrix products
of a decode step at batch 1 and 8 with nothing else. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def best_of(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    weights = [torch.randn(n, k) for n, k in SHAPES]
    nbytes = sum(w.numel() * 4 for w in weights)
    flat = torch.ones(nbytes // 4)
    out = {"threads": args.threads, "torch": torch.__version__, "machine": cpu_name(),
           "weight_bytes": nbytes, "sum_s": best_of(lambda: flat.sum(), args.rounds)}
    for m in (1, 8):
        xs = {k: torch.randn(m, k) for k in (576, 1536)}
        out[f"matmul_rows{m}_s"] = best_of(lambda: [xs[w.size(1)] @ w.t() for w in weights], args.rounds)
    for key in ("sum_s", "matmul_rows1_s", "matmul_rows8_s"):
        out[key.replace("_s", "_gb_per_s")] = round(nbytes / out[key] / 1e9, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
