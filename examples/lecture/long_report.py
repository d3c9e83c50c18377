"""The long runs' table and success-against-steps plot (docs/experiments.md, issue 21).

    python examples/lecture/long_report.py OUT [--png docs/img/long-runs-success.png]

For every run folder in OUT (long_runs.py's): the last step reached, the in-training success
rate (200 samples every 500 steps) at 15,000 steps and at the last evaluation, the first
evaluation at which it reached 90% ("learned at"), and the 1,000-sample `seqlab eval` rows of
OUT/long.jsonl; one panel per task with a curve per run.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

# the lecture's figure for each task, with when it was read: the rules' table is at 15,000
# steps, the Fibonacci runs are described after a day and a night
LECTURE = {"rule-18-47": "99% at 15,000", "rule-18-n20": "54% at 15,000", "rule-last2": "90% at 15,000",
           "rule-three": "99% at 15,000", "rule-three-neg": "51% at 15,000",
           "fibonacci": "all correct after a day (400k params)", "fibonacci-2": "learned overnight"}


def curve(run: Path) -> list[tuple[int, float]]:
    with open(run / "metrics.csv") as f:
        return [(int(r["step"]), float(r["success_rate"])) for r in csv.DictReader(f) if r.get("success_rate")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--png")
    args = ap.parse_args()
    out = Path(args.out)
    evals = {}
    if (out / "long.jsonl").exists():
        for r in map(json.loads, (out / "long.jsonl").read_text().splitlines()):
            evals[(r["run"], r["steps"])] = r["eval_last"]["success_rate"]
    runs = sorted(p for p in out.iterdir() if (p / "metrics.csv").exists())
    print("| run | task | lecture | steps so far | success at 15,000 (1,000 samples) | "
          "longest evaluated (1,000 samples) | in-training success: last | learned (>= 90%) at step |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    curves = {}
    for run in runs:
        task = json.loads((run / "config.json").read_text())["train"]["eval_task"]
        pts = curve(run)
        curves[run.name] = (task, pts)
        last_step = max((int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv"))), default=0)
        learned = next((s for s, v in pts if v >= 0.9), None)
        at15 = evals.get((run.name, 15_000))
        longest = max((s for r, s in evals if r == run.name), default=None)
        at_longest = "-" if longest is None else f"{evals[(run.name, longest)]:.1%} at {longest:,}"
        print(f"| {run.name} | {task} | {LECTURE.get(task, '-')} | {last_step:,} | "
              f"{'-' if at15 is None else f'{at15:.1%}'} | {at_longest} | {pts[-1][1]:.1%} at {pts[-1][0]:,} | "
              f"{'-' if learned is None else f'{learned:,}'} |" if pts else f"| {run.name} | {task} | - | "
              f"{last_step:,} | - | {at_longest} | - | - |")
    if args.png and curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tasks = sorted({t for t, _ in curves.values()})
        fig, axes = plt.subplots(len(tasks), 1, figsize=(7, 2.6 * len(tasks)), squeeze=False)
        for ax, task in zip(axes[:, 0], tasks):
            for name, (t, pts) in curves.items():
                if t == task and pts:
                    ax.plot([s for s, _ in pts], [100 * v for _, v in pts], "o-", ms=2.5, label=name)
            ax.set_title(f"{task} (lecture: {LECTURE.get(task, '-')})", fontsize=9)
            ax.set_ylabel("% samples obeying")
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[-1, 0].set_xlabel("training step")
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)


if __name__ == "__main__":
    main()
