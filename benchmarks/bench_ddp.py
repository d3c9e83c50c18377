"""Data-parallel scaling on this machine: `seqlab train` in 1 process vs 2 torchrun
processes (gloo), 1 torch thread each, the same global batch.

    python benchmarks/bench_ddp.py [--rounds 3] [--steps 150] [--out benchmarks/ddp_results.json]

Two shapes on names.txt, fp32: `small`, makemore's default transformer (4 layers, 4 heads,
64 dims), global batch 64 (2 processes: 32 rows each): a step of this size is mostly
per-operation overhead, which a second process does not halve; `large`, 6 layers, 6 heads,
192 dims, global batch 256: mostly arithmetic, which it does. Each contender is its own command
(`python -m seqlab train` or `python -m torch.distributed.run --nproc-per-node 2 -m
seqlab train`), the rounds interleave them (the order alternates), and a round's figure
is the training throughput seqlab logs itself (tokens/s over the logged windows after
the first `--skip` steps: start-up and warm-up excluded), plus the whole command's wall
time. Reports medians over rounds and their ratio; the raw rows go to --out with the
machine, versions and the commit measured.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_core import DEFAULT_NAMES, machine_info
from machine_load import CpuMeter

HERE = Path(__file__).resolve().parent
SHAPES = {"small": (4, 64, 64), "large": (6, 192, 256)}  # layers (= heads), dims, global batch

CONFIG = """
[data]
path = "{data}"
[model]
type = "transformer"
n_layer = {layers}
n_head = {layers}
n_embd = {dims}
dropout = 0.0
[train]
steps = {steps}
batch_size = {batch}
lr = 0.001
log_interval = 10
eval_interval = 100000
checkpoint_interval = 100000
threads = 1
"""


def one_run(nproc: int, cfg: Path, out: Path, skip: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["-m", "seqlab", "train", "--config", str(cfg), "--out", str(out), "--quiet"]
    cmd = [sys.executable, *train] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *train]
    meter = CpuMeter()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["tokens_per_s"] and int(r["step"]) > skip]
    return {"processes": nproc, "tokens_per_s": statistics.median(float(r["tokens_per_s"]) for r in rows),
            "wall_s": round(wall, 2), "others_share": meter.others_share()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--skip", type=int, default=30)
    ap.add_argument("--data", default=str(DEFAULT_NAMES))
    ap.add_argument("--out", default=str(HERE / "ddp_results.json"))
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    report = {"what": "seqlab train, 1 vs 2 torchrun processes (gloo), 1 thread each, same global batch",
              "commit": commit, "date": datetime.date.today().isoformat(), "machine": machine_info(),
              "shapes": {}}
    for shape, (layers, dims, batch) in SHAPES.items():
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "ddp.toml"
            cfg.write_text(CONFIG.format(data=args.data, steps=args.steps, layers=layers, dims=dims, batch=batch))
            for r in range(args.rounds):
                for nproc in ((1, 2) if r % 2 == 0 else (2, 1)):
                    res = one_run(nproc, cfg, Path(tmp) / f"r{r}-p{nproc}", args.skip)
                    res["round"] = r
                    rows.append(res)
                    print(shape, json.dumps(res), flush=True)
        med = {n: statistics.median(x["tokens_per_s"] for x in rows if x["processes"] == n) for n in (1, 2)}
        wall = {n: statistics.median(x["wall_s"] for x in rows if x["processes"] == n) for n in (1, 2)}
        report["shapes"][shape] = {"model": f"transformer {layers}x{layers}x{dims}, names.txt, global batch {batch}",
                                   "steps": args.steps, "rows": rows, "median_tokens_per_s": med,
                                   "median_wall_s": wall, "speedup_tokens_per_s": round(med[2] / med[1], 3)}
        print(f"{shape}: 1 process {med[1]:.0f} tok/s, 2 processes {med[2]:.0f} tok/s: {med[2] / med[1]:.2f}x "
              f"(wall {wall[1]:.1f} s vs {wall[2]:.1f} s)", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
