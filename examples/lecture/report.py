"""Markdown table from run_experiments.py's results.jsonl, beside the lecture's figures."""

import json
import sys
from pathlib import Path

LECTURE = {
    "rule-13-22": "99.7% after 15,000 steps",
    "rule-18-47": "99% after 15,000; >99% after 150,000",
    "rule-18-n20": "54% after 15,000; >99% after 150,000",
    "rule-last2": "90% after 15,000; >99% after 150,000",
    "rule-three": "99% after 15,000; >99% after 150,000",
    "rule-three-neg": "51% after 15,000; >99% after 150,000",
    "unique-2": "heatmap only",
    "zero-or-two-2s": "heatmap only",
    "fibonacci": "'all correct' (400k params, one day)",
    "fibonacci-2": "'learned the rule completely overnight'",
    "board-4-5": "heatmap only",
}


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def main(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    print("| experiment | lecture | seqlab steps | wall | success (best ckpt) | success (last ckpt) "
          "| novelty (last) | best val loss | entropy floor | gap |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        best, last = r["eval_best"], r["eval_last"]
        floor = best["entropy_floor"]
        gap = f"+{100 * (best['val_loss'] / floor - 1):.1f}%" if floor else "n/a"
        print(f"| {r['experiment']} (`{r['task']}`, {r['examples']:,} lines) | {LECTURE.get(r['task'], '')} "
              f"| {r['train']['step']:,} | {r['wall_s'] / 60:.1f} min | {pct(best['success_rate'])} "
              f"| {pct(last['success_rate'])} | {pct(last['novelty'])} | {best['val_loss']:.4f} "
              f"| {'n/a' if floor is None else f'{floor:.4f}'} | {gap} |")


if __name__ == "__main__":
    main(sys.argv[1])
