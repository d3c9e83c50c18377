"""Summarise several `seqlab recipe arithmetic` runs (one per seed) as markdown.

    python examples/post/report_arithmetic.py runs/arith-s0 runs/arith-s1 runs/arith-s2 [--plot grpo.png]

The pretrain row shows the pretrained model's accuracy in its own plain-text format
("question a+b=c"): it has never seen the reasoning template.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def plot(runs, path: str) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for d, r in runs:
        rows = list(csv.DictReader((d / "grpo" / "metrics.csv").open()))
        x = [float(row["elapsed_s"]) for row in rows]
        y = [float(row["reward/answer_exact"]) for row in rows]
        k = 20  # moving average over 20 updates
        smooth = [sum(y[max(0, i - k + 1): i + 1]) / len(y[max(0, i - k + 1): i + 1]) for i in range(len(y))]
        ax.plot(x, smooth, label=f"seed {r['config']['seed']}")
    ax.set_xlabel("wall-clock seconds of GRPO (2-core CPU, shared)")
    ax.set_ylabel("answer_exact reward (0 or 3), mean of 20 updates")
    ax.set_title("arithmetic recipe: GRPO reward on training prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(dirs: list[str]) -> None:
    plot_path = None
    if "--plot" in dirs:
        i = dirs.index("--plot")
        plot_path = dirs[i + 1]
        dirs = dirs[:i] + dirs[i + 2:]
    runs = [(Path(d), json.loads((Path(d) / "results.json").read_text())) for d in dirs]
    if plot_path:
        plot(runs, plot_path)
    stages = list(runs[0][1]["stages"])
    seeds = [r["config"]["seed"] for _, r in runs]
    print("| stage | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | wall time per run (s) | updates |")
    print("|---|" + "---:|" * (len(seeds) + 3))
    for st in stages:
        key = "plain_text_accuracy" if st == "pretrain" else "accuracy"
        accs = [r["stages"][st][key] for _, r in runs if st in r["stages"]]
        secs = [r["stages"][st]["seconds"] for _, r in runs if st in r["stages"]]
        steps = [r["stages"][st].get("steps") for _, r in runs if st in r["stages"]]
        cells = " | ".join(f"{a:.1%}" for a in accs)
        upd = "-" if steps[0] is None else f"{min(steps)}-{max(steps)}"
        label = "pretrain (own format)" if st == "pretrain" else st
        print(f"| {label} | {cells} | {statistics.fmean(accs):.1%} | {statistics.fmean(secs):.0f} | {upd} |")
    gains = ", ".join(f"{r['grpo_gain_points']:+.1f}" for _, r in runs)
    plain = ", ".join(f"{r['stages']['pretrain']['plain_text_accuracy']:.1%}" for _, r in runs)
    print(f"\nGRPO gain over SFT (points): {gains}; plain-text accuracy of the pretrained model: {plain}")

if __name__ == "__main__":
    main(sys.argv[1:])
