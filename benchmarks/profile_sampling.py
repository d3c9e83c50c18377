"""Where does seqlab's cached sampling spend its time? (companion to bench_core.py)

    python benchmarks/profile_sampling.py [--threads 2] [--hf] [--rows 25]

Profiles one `seqlab.sampling.generate` call at the bench_core shape (batch 64,
128 new tokens from a 1-token prompt, 4 layers / 4 heads / 64 dims, context 256,
untrained model, eos disabled) with torch.profiler, and prints the op table
sorted by self CPU time, plus ops per decoded token. --hf profiles transformers
`generate` on the same shape for comparison.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

B, N, CTX = 64, 128, 256


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--hf", action="store_true", help="also profile transformers generate")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import bench_core as bc
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
                hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                            max_new_tokens=N, min_new_tokens=N, use_cache=True, pad_token_id=0)

        todo.append(("transformers generate (cache)", run_hf))

    for name, fn in todo:
        fn()  # warm-up
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        print(f"\n=== {name}: {args.threads} threads, unprofiled wall per call {sorted(ts)[1] * 1000:.0f} ms "
              f"(min {min(ts) * 1000:.0f}) = {B * N / sorted(ts)[1]:,.0f} new tok/s")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = prof.key_averages()
        total_self = sum(e.self_cpu_time_total for e in events)
        print(f"profiled: total self CPU {total_self / 1000:.0f} ms")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
        # top-level aten calls per decoded token (dispatcher round-trips)
        top = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
        print(f"top-level aten ops: {len(top)} = {len(top) / N:.0f} per decoding step")


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
