"""Print a markdown table of finished runs: model, parameters, steps, best
validation loss (and when it was reached), wall time."""

import csv
import json
import math
import sys
from pathlib import Path

from safetensors import safe_open

print("| model | parameters | steps | best val loss | at step | wall time to best | total wall time |")
print("|---|---:|---:|---:|---:|---:|---:|")
for run in map(Path, sys.argv[1:]):
    cfg = json.loads((run / "config.json").read_text())
    best = json.loads((run / "best.json").read_text())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    elapsed = {int(r["step"]): float(r["elapsed_s"]) for r in rows if r["elapsed_s"]}
    at_best = elapsed.get(best["step"], float("nan"))
    total = max(elapsed.values())
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    print(f"| {cfg['model']['type']} | {params:,} | {cfg['train']['steps']:,} | {best['val_loss']:.4f} | "
          f"{best['step']:,} | {at_best:.0f} s | {total:.0f} s |")
