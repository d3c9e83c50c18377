"""Where does cached sampling spend its time? (companion to bench_core.py)

    python benchmarks/profile_sampling.py [--hf] [--threads 2] [--rows 20]

Profiles one `seqlab.sampling.generate` call at the bench_core shape (batch 64,
128 new tokens from a 1-token prompt, 4 layers / 4 heads / 64 dims, context 256,
untrained model, eos disabled) with torch.profiler and prints

  * time per decoding step split into categories (attention, linear layers,
    GELU, layer norm, copies, sampler ops, other ops, and time outside aten ops:
    Python + dispatch), from the top-level aten ops of the trace;
  * the op table sorted by self CPU time.

--hf does the same for transformers `generate` on the same shape. Run it on a
quiet machine: with 2 threads, anything else running inflates every op.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_core as bc  # noqa: E402

B, N, CTX = 64, 128, 256

CATEGORIES = [  # exact top-level aten op names
    ("attention (SDPA)", {"aten::scaled_dot_product_attention"}),
    ("linear layers + lm_head (addmm/mm, bias copy)", {"aten::linear", "aten::addmm", "aten::mm", "aten::matmul"}),
    ("GELU (HF: tanh + pow; its mul/add land in 'other')", {"aten::gelu", "aten::tanh", "aten::pow"}),
    ("layer norm", {"aten::layer_norm"}),
    ("cache growth (cat)", {"aten::cat"}),
    ("copies (KV-cache writes, bookkeeping)", {"aten::copy_", "aten::index_put_", "aten::_to_copy", "aten::to"}),
    ("sampler (log_softmax/exp/multinomial/topk/...)", {
        "aten::log_softmax", "aten::multinomial", "aten::exponential_", "aten::exp", "aten::topk",
        "aten::gather", "aten::argmax", "aten::masked_fill", "aten::masked_fill_", "aten::softmax",
        "aten::isin", "aten::where", "aten::any", "aten::all"}),
]


def category(name: str) -> str:
    for cat, names in CATEGORIES:
        if name in names:
            return cat
    return "other ops (embedding, add, views, ...)"


def breakdown(prof, wall_s: float, steps: int) -> list[tuple[str, float]]:
    top = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
    per = defaultdict(float)
    for e in top:
        per[category(e.name)] += e.cpu_time_total  # us, children included
    in_ops = sum(per.values())
    rows = sorted(per.items(), key=lambda kv: -kv[1])
    rows.append(("outside aten ops (Python, dispatch, profiler)", max(0.0, wall_s * 1e6 - in_ops)))
    return [(k, v / steps) for k, v in rows], len(top)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--hf", action="store_true", help="also profile transformers generate")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from seqlab.sampling import DecodeRule, generate

    sl = bc.seqlab_transformer(args.vocab, CTX, seed=2).eval()

    def run_sl():
        generate(sl, [[1]] * B, N, DecodeRule(), eos_id=-1, pad_id=0, generator=torch.Generator().manual_seed(0))

    todo = [("seqlab generate (KV cache)", run_sl)]
    if args.hf:
        hf = bc.hf_gpt2(args.vocab, CTX, seed=2).eval()
        prompt = torch.ones(B, 1, dtype=torch.long)

        def run_hf():
            with torch.inference_mode():
                hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **bc.hf_generate_kwargs(N))

        todo.append(("transformers generate (cache)", run_hf))

    for name, fn in todo:
        fn()  # warm-up
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        med = statistics.median(ts)
        print(f"\n=== {name}: {args.threads} threads, unprofiled {med * 1000:.0f} ms per call "
              f"(min {min(ts) * 1000:.0f}) = {B * N / med:,.0f} new tok/s = {med / N * 1e6:.0f} us per step")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
        rows, n_top = breakdown(prof, wall, N)
        print(f"profiled call: {wall * 1000:.0f} ms; {n_top / N:.0f} top-level aten ops per step")
        print(f"{'per decoding step':50s} {'us':>8s} {'share':>6s}")
        total = sum(v for _, v in rows)
        for k, v in rows:
            print(f"{k:50s} {v:8.1f} {v / total:6.1%}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
