"""Summarise several `seqlab recipe arithmetic` runs (one per seed) as markdown.

    python examples/post/report_arithmetic.py runs/arith-s0 runs/arith-s1 runs/arith-s2
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(dirs: list[str]) -> None:
    runs = [(Path(d), json.loads((Path(d) / "results.json").read_text())) for d in dirs]
    stages = list(runs[0][1]["stages"])
    seeds = [r["config"]["seed"] for _, r in runs]
    print("| stage | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | wall time per run (s) | updates |")
    print("|---|" + "---:|" * (len(seeds) + 3))
    for st in stages:
        accs = [r["stages"][st]["accuracy"] for _, r in runs if st in r["stages"]]
        secs = [r["stages"][st]["seconds"] for _, r in runs if st in r["stages"]]
        steps = [r["stages"][st].get("steps") for _, r in runs if st in r["stages"]]
        cells = " | ".join(f"{a:.1%}" for a in accs)
        upd = "-" if steps[0] is None else f"{min(steps)}-{max(steps)}"
        print(f"| {st} | {cells} | {statistics.fmean(accs):.1%} | {statistics.fmean(secs):.0f} | {upd} |")
    gains = [r["grpo_gain_points"] for _, r in runs]
    print(f"\nGRPO gain over SFT (points): {', '.join(f'{g:+.1f}' for g in gains)}; "
          f"plain-text accuracy of the pretrained model: "
          f"{', '.join(f'{r['stages']['pretrain']['plain_text_accuracy']:.1%}' for _, r in runs)}")


if __name__ == "__main__":
    main(sys.argv[1:])
