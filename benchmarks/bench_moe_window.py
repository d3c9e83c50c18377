"""Sliding-window attention and mixture-of-experts against their dense counterparts (issue 20).

    python benchmarks/bench_moe_window.py [--out raw/moe-window.json] [--seconds 120] [--threads 2]

(a) sampling 4,096 new tokens per row (batch 8, a 1-token prompt, plain sampling, no row
    stops: eos disabled), 4 layers, 4 heads, 64 wide, rotary positions, context 4,097:
    full attention (a KV cache of 4,096 positions) against a 256-token sliding window (a
    ring cache of 256 slots). Tokens/s (median of --repeats calls) and the process's peak
    resident memory above what it held before the first call, each in a process of its own.
(b) names.txt, the default 4x4x64 transformer: dense GELU MLP against 4 experts with top-1
    routing (the same parameters active per token, four times the MLP parameters in all):
    milliseconds per training step, and the validation loss after the same wall time
    (--seconds each, one run after the other, order alternating over --rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = Path(os.environ.get("SEQLAB_NAMES", "/work/shared/data/names.txt"))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def sample_worker(window: int, repeats: int, threads: int) -> dict:
    import torch

    from seqlab.config import ModelConfig
    from seqlab.models import build_model
    from seqlab.sampling import generate

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(type="transformer", n_layer=4, n_head=4, n_embd=64, block_size=4097,
                                    pos="rope", dropout=0.0, attention_window=window), 65).eval()
    B, new = 8, 4096
    base = rss_kib()
    times = []
    with torch.no_grad():
        for r in range(repeats):
            t0 = time.perf_counter()
            gen = generate(model, [[1]] * B, new, eos_id=-1, generator=torch.Generator().manual_seed(r))
            times.append(time.perf_counter() - t0)
            assert int(gen.lengths.sum()) == B * new
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    a = model.blocks[0].attn
    slots = window or 4096
    cache_bytes = 2 * len(model.blocks) * B * a.n_kv_head * slots * a.head_dim * 4
    med = statistics.median(times)
    return {"window": window, "tokens_per_call": B * new, "median_s": med, "min_s": min(times),
            "tokens_per_s": B * new / med, "peak_rss_above_start_mib": (peak - base) / 1024,
            "kv_cache_mib": cache_bytes / 2**20, "repeats": repeats}


def train_worker(experts: int, seconds: float, threads: int, out: str) -> dict:
    from seqlab.config import run_config_from_dict
    from seqlab.train import train

    cfg = run_config_from_dict({"data": {"path": str(NAMES)},
                             "model": {"type": "transformer", "moe_experts": experts, "moe_top_k": 1},
                             "train": {"steps": 10**6, "threads": threads, "eval_interval": 500,
                                       "checkpoint_interval": 10**6, "seed": 1337}})
    t0 = time.perf_counter()
    res = train(cfg, out, progress=False, deadline=t0 + seconds)
    rows = [r for r in csv_rows(Path(out) / "metrics.csv") if r.get("val_loss")]
    return {"experts": experts, "steps": res["step"], "seconds": time.perf_counter() - t0,
            "ms_per_step": 1000 * res["seconds"] / res["step"], "val_loss": res["val_loss"],
            "params": res["params"], "curve": [(int(r["step"]), float(r["val_loss"])) for r in rows],
            "expert_usage": rows[-1].get("expert_usage") if experts else None}


def csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def in_process(kind: str, **kw) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", kind, "--kw", json.dumps(kw)], capture_output=True,
                       text=True, cwd=HERE)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", choices=["sample", "moe"])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--kw", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kw = json.loads(args.kw)
        print(json.dumps(sample_worker(**kw) if args.worker == "sample" else train_worker(**kw)))
        return 0
    import torch

    import seqlab

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "torch": torch.__version__, "python": platform.python_version(), "seqlab": seqlab.__version__,
                       "git": git.strip(), "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M UTC")}}
    if args.only in (None, "sample"):
        res["sample"] = [in_process("sample", window=w, repeats=args.repeats, threads=args.threads)
                         for w in (0, 256, 0, 256)]  # each twice, alternating, each in its own process
        for r in res["sample"]:
            print(f"window {r['window'] or 'full'}: {r['tokens_per_s']:,.0f} tok/s, peak RSS +"
                  f"{r['peak_rss_above_start_mib']:.1f} MiB (KV cache {r['kv_cache_mib']:.1f} MiB)", flush=True)
    if args.only in (None, "moe"):
        res["moe"] = []
        with tempfile.TemporaryDirectory() as tmp:
            for rnd in range(args.rounds):
                for experts in ((0, 4) if rnd % 2 == 0 else (4, 0)):
                    r = in_process("train", experts=experts, seconds=args.seconds, threads=args.threads,
                                   out=f"{tmp}/r{rnd}-e{experts}")
                    r["round"] = rnd
                    res["moe"].append(r)
                    print(f"round {rnd} experts {experts}: {r['steps']} steps, {r['ms_per_step']:.1f} ms/step, "
                          f"val {r['val_loss']:.4f}, params {r['params']:,}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
