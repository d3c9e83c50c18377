"""Reproduce the makemore lecture's experiments with seqlab's CLI.

    python examples/lecture/run_experiments.py OUT_DIR [--only NAME ...] [--steps-scale X]

For each experiment: make the dataset, train the default transformer (flags as
listed below), evaluate 1000 samples with the task's verifier, draw heatmaps,
and append one JSON line to OUT_DIR/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# name, task, examples, extra train flags, heatmap input
H1322 = "010011010101" + "1" + "01101010" + "1" + "0110100101"  # 32 digits, 13th = 22nd = 1
EXPERIMENTS = [
    ("13=22 lecture-like", "rule-13-22", 1000, ["--steps", "15000", "--dropout", "0", "--weight-decay", "0.01"],
     H1322),
    ("13=22 defaults", "rule-13-22", 1000, [], H1322),
    ("13=22 no weight decay", "rule-13-22", 1000, ["--weight-decay", "0"], H1322),
    ("13=22 no dropout, no weight decay", "rule-13-22", 1000, ["--weight-decay", "0", "--dropout", "0"], H1322),
    ("18=47", "rule-18-47", 100_000, ["--steps", "2000"], None),
    ("18=n-20", "rule-18-n20", 100_000, ["--steps", "2000"], None),
    ("last two equal", "rule-last2", 100_000, ["--steps", "2000"], None),
    ("18=39, 31=44, 4=28", "rule-three", 100_000, ["--steps", "2000"], None),
    ("18=39, 31=44, 4=-28", "rule-three-neg", 100_000, ["--steps", "2000"], None),
    ("exactly one 2", "unique-2", 10_000, ["--steps", "3000"], "0110102011011"),
    ("zero or two 2s", "zero-or-two-2s", 10_000, ["--steps", "3000"], "0110100110120101101001101021011"),
    ("Fibonacci", "fibonacci", 100_000, ["--steps", "3000"], "444,148,592,740,1332,2072,3404"),
    ("Fibonacci part 2", "fibonacci-2", 100_000, ["--steps", "3000"], "521,142,663,679,13"),
    ("8x8 board, no distance 4 or 5", "board-4-5", 10_000, ["--steps", "3000"],
     "1000100000000000011000000000000010000000000000001100000000000000"),
]


def sh(*args) -> str:
    r = subprocess.run(["seqlab", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: seqlab {' '.join(map(str, args))}\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--threads", default="2")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, task, n, flags, heat_input in EXPERIMENTS:
        slug = name.replace(" ", "_").replace(",", "").replace("=", "-").replace(".", "")
        if args.only and slug not in args.only and task not in args.only:
            continue
        data = out / f"{task}.txt"
        if not data.exists():
            sh("data", "make", task, "--out", data, "--n", n, "--seed", 0)
        run = out / slug
        t0 = time.time()
        train = json.loads(sh("train", "--data", data, "--out", run, "--threads", args.threads, "--quiet",
                              "--json", *flags).strip().splitlines()[-1])
        wall = time.time() - t0
        keys = ("success_rate", "wellformed_rate", "novelty", "distinct", "val_loss", "entropy_floor")
        row = {"experiment": name, "task": task, "examples": n, "flags": flags, "train": train,
               "wall_s": round(wall, 1)}
        for which in ("best", "last"):  # best = lowest validation loss; last = end of training
            ev = json.loads(sh("eval", run, "--task", task, "--n", 1000, "--checkpoint", which,
                               "--json").strip().splitlines()[-1])
            row[f"eval_{which}"] = {k: ev[k] for k in keys}
        if heat_input:
            hm = json.loads(sh("heatmap", run, "--input", heat_input, "--out", out / f"{slug}.png",
                               "--avg-samples", 200, "--checkpoint", "last", "--json").strip().splitlines()[-1])
            row["heatmap"] = hm
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
