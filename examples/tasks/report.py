"""The tasks table (docs/tasks.md) from run_tasks.py's results.jsonl.

    python examples/tasks/report.py OUT/results.jsonl
"""

from __future__ import annotations

import json
import sys

METRICS = {"classify": ("accuracy", "macro_f1"), "regress": ("mse", "mae", "r2"), "seq2seq": ("exact_match", "cer")}
TARGETS = {"add": ("exact_match", 0.99), "reverse": ("exact_match", 0.99), "sort": ("exact_match", 0.99),
           "date-format": ("exact_match", 0.99), "parens-balanced": ("accuracy", 0.99),
           "python-compiles": ("accuracy", 0.95)}


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    for kind in ("classify", "regress", "seq2seq"):
        mine = [r for r in rows if r["type"] == kind]
        if not mine:
            continue
        keys = METRICS[kind]
        print(f"\n| task | model | steps | params | train wall | {' | '.join(keys)} |")
        print("|---|---|---:|---:|---:|" + "---:|" * len(keys))
        for task in dict.fromkeys(r["task"] for r in mine):
            group = [r for r in mine if r["task"] == task]
            target = TARGETS.get(task)
            best = max((r for r in group if not r.get("baseline")), key=lambda r: r[keys[0]] * (-1 if kind == "regress"
                                                                                                   else 1), default=None)
            for r in group:
                name = r["model"] + (" (baseline)" if r.get("baseline") else "")
                bold = r is best
                vals = [("**" + fmt(r.get(k)) + "**") if bold and k == keys[0] else fmt(r.get(k)) for k in keys]
                wall = f"{r['train_wall_s'] / 60:.1f} min" if "train_wall_s" in r else "-"
                print(f"| {task} | {name} | {fmt(r.get('steps'))} | {fmt(r.get('params'))} | {wall} | "
                      + " | ".join(vals) + " |")
            if target and best:
                got = best[target[0]]
                print(f"| {task} | target: {target[0]} >= {target[1]} | | | | "
                      f"{'met' if got >= target[1] else 'missed'} ({got:.4f}) |" + " |" * (len(keys) - 1))


if __name__ == "__main__":
    main(sys.argv[1])
