"""The issue's comparison of the three discovery searchers at equal wall-clock budget.

    python benchmarks/discover_compare.py --runs RUNS_DIR [--minutes 10] [--seeds 0 1 2]
                                          [--sizes golomb:10 c4-free:40 ...] [--searchers local patternboost grpo]
    python benchmarks/discover_compare.py --runs RUNS_DIR --report docs/img   # table + plots only
    python benchmarks/discover_compare.py --runs RUNS_DIR --collect benchmarks/discover_compare
        # copy runs.json and every run's metrics.csv + best.json (not the models) into the repo;
        # --report works on the copy too

Every (problem, n, searcher, seed) is one `seqlab discover` run of --minutes on all
cores (or until it reaches a best-known value that is a proven optimum), one after the
other (never two at once: they would share the cores). A run that finished (best.json
written) is kept and skipped, so the script can be stopped and started again (or held
between runs: `touch RUNS_DIR/PAUSE`); a run that was cut off is started again from
scratch, because a resumed run would not have had one uninterrupted budget. Searchers
alternate within each (size, seed) so that slow drifts of the shared machine's load hit
all of them.

Each run records the load average before and after and the CPU time that other
processes took during it (from /proc/stat, minus this run's own), in RUNS_DIR/runs.json.
The report prints, per size, the best-known value and each searcher's mean and best
final score over the seeds, with the time each run first reached its final best,
and draws best score vs time for every searcher (one PNG per size).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from seqlab.discover.command import _fmt  # "-" for a size with no best-known value

HARD = ["isosceles-free:32", "c4-free:40", "no-three-in-line:20", "no-three-in-line:24",
        "golomb:10", "golomb:11", "golomb:12"]
SEARCHERS = ["local", "patternboost", "grpo"]
# Best-known values that are proven optima: 2n bounds no-three-in-line; OEIS A003022 (Golomb)
# and A006855 (ex(n; C4)) list exact values. A run that reaches one can only tie from then
# on, so it stops there (--target best-known) and its time to the optimum is the figure.
# isosceles-free's values are only the best found so far: those runs use the whole budget.
PROVEN_OPTIMA = {"no-three-in-line", "golomb", "c4-free"}


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    parts = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0.0)
    return sum(parts) - idle, sum(parts)


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def wait_while_paused(runs: Path) -> None:
    """`touch RUNS_DIR/PAUSE` holds the next run back (the cores are free for other
    work in between); removing the file lets it start."""
    flag = runs / "PAUSE"
    if flag.exists():
        print(f"{time.strftime('%H:%M:%S')} paused: waiting for {flag} to go", flush=True)
        while flag.exists():
            time.sleep(5)


def best_known(problem: str, n: int) -> float | None:
    from seqlab.discover.problems import get_problem_class

    return get_problem_class(problem).best_known(n)


def run_one(problem: str, n: int, searcher: str, seed: int, minutes: float, out: Path) -> dict:
    if out.exists():
        import shutil

        shutil.rmtree(out)  # cut off earlier: a fresh, uninterrupted budget
    cmd = [sys.executable, "-m", "seqlab.cli", "discover", problem, "--n", str(n), "--out", str(out),
           "--searcher", searcher, "--minutes", str(minutes), "--seed", str(seed), "--json", "--quiet"]
    if problem in PROVEN_OPTIMA and best_known(problem, n) is not None:
        cmd += ["--target", "best-known"]
    load0 = os.getloadavg()[0]
    b0, t0 = cpu_busy()
    c0 = children_cpu()
    w0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - w0
    b1, t1 = cpu_busy()
    own = (children_cpu() - c0) * os.sysconf("SC_CLK_TCK")
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    other = max(0.0, (b1 - b0) - own) / max(1.0, t1 - t0)
    return {"problem": problem, "n": n, "searcher": searcher, "seed": seed, "minutes": minutes,
            "best_score": res["best_score"], "best_known": res["best_known"], "wall_s": round(wall, 1),
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
            "other_cpu_share": round(other, 3), "run": str(Path(*out.parts[-2:])),
            "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def run_dir(record: dict, runs: Path) -> Path:
    """A run's directory: <size>/<run> under the runs directory (older records hold absolute paths)."""
    p = Path(record["run"])
    if p.is_absolute():
        return p if p.exists() else runs / Path(*p.parts[-2:])
    return runs / p


def curve(rows: list[dict]) -> list[tuple[float, float]]:
    """(seconds, best so far) from a run's metrics rows."""
    return [(float(r["seconds"]), float(r["best"])) for r in rows if r.get("best") not in (None, "")]


def time_to_final(points: list[tuple[float, float]]) -> float | None:
    if not points:
        return None
    final = points[-1][1]
    return next(t for t, b in points if b >= final)


def _rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((run_dir / "metrics.csv").open(encoding="utf-8")))


def _num(row: dict, key: str) -> float | None:
    v = row.get(key)
    return None if v in (None, "") else float(v)


def _mean(values) -> float | None:
    """The mean of the values that are present (not None), or None if none is."""
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def diagnostics(rows: list[dict]) -> dict:
    """What a model-based run did: generations after the initial pool, the generation whose
    pool first held the final best, and per-generation means of sample validity before
    repair, novelty against the pool and the time split."""
    gens = [r for r in rows if int(r["round"]) >= 1]
    final = _num(rows[-1], "best") if rows else None
    found = next((int(r["round"]) for r in rows if final is not None and _num(r, "best") >= final), None)

    def mean(key, rows=gens):
        return _mean(_num(r, key) for r in rows)

    # novelty is the share of the valid samples that are new: only generations with some
    with_valid = [r for r in gens if (_num(r, "valid_before_repair") or 0) > 0]

    # pool diversity: the share of a generation's locally searched samples that entered the
    # pool as constructions it did not hold (after repair + local search, unlike novelty)
    entered = [_num(r, "distinct") / _num(r, "new") for r in gens if _num(r, "new")]

    return {"generations": len(gens), "best_found_in": found, "valid": mean("valid_before_repair"),
            "novelty": mean("novelty", with_valid), "train_s": mean("train_s"), "grpo_s": mean("grpo_s"),
            "sample_s": mean("sample_s"), "local_s": mean("local_s"),
            "entered": _mean(entered),
            "entered_last": entered[-1] if entered else None,
            "gen0_s": _num(rows[0], "seconds") if rows else None}


def why(per_run: list[dict]) -> dict:
    """One (size, searcher)'s diagnostics over its seeds: means of the per-run figures, the
    time split as shares of a generation, and how many runs found their final best after
    generation 0 (i.e. with a model's samples)."""
    def mean(key):
        return _mean(d[key] for d in per_run)

    parts = {k: mean(k) for k in ("train_s", "grpo_s", "sample_s", "local_s")}
    total = sum(v for v in parts.values() if v is not None)
    shares = {k: (v / total if v is not None and total else None) for k, v in parts.items()}
    return {"runs": len(per_run), "generations": mean("generations"), "valid": mean("valid"),
            "novelty": mean("novelty"), "entered": mean("entered"), "entered_last": mean("entered_last"),
            "after_gen0": sum(1 for d in per_run if (d["best_found_in"] or 0) >= 1), **shares}


def report(records: list[dict], runs: Path, img_dir: Path | None) -> str:
    lines = ["| problem | n | minutes | best known | searcher | runs | mean | best | scores (seeds) | "
             "time to final best, s (median) | other CPU during runs |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---|"]
    diag = ["", "| problem | n | minutes | searcher | seed | generations | final best first in generation | "
            "valid before repair | novelty | train s / gen | GRPO s / gen | sample s / gen | local s / gen | "
            "generation 0, s |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    summary = ["", "| problem | n | minutes | searcher | generations | runs whose final best came from a model "
               "generation | valid before repair | novelty of valid samples | samples entering the pool after "
               "local search (last generation) | train | GRPO | sample | local search |",
               "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    sizes = list(dict.fromkeys((r["problem"], r["n"], r["minutes"]) for r in records))
    for problem, n, minutes in sizes:
        for searcher in SEARCHERS:
            rs = sorted((r for r in records if (r["problem"], r["n"], r["minutes"], r["searcher"])
                         == (problem, n, minutes, searcher)), key=lambda r: r["seed"])
            if not rs:
                continue
            scores = [r["best_score"] for r in rs]
            metrics = [_rows(run_dir(r, runs)) for r in rs]  # read once: curve and diagnostics
            ttf = [time_to_final(curve(rows)) for rows in metrics]
            ttf = [t for t in ttf if t is not None]
            lines.append(f"| {problem} | {n} | {minutes:g} | {_fmt(rs[0]['best_known'])} | {searcher} | {len(rs)} | "
                         f"{statistics.fmean(scores):.2f} | {max(scores):g} | {' '.join(f'{s:g}' for s in scores)} | "
                         f"{statistics.median(ttf):.0f} | "
                         f"{min(r['other_cpu_share'] for r in rs):.0%}-{max(r['other_cpu_share'] for r in rs):.0%} |")
            if searcher == "local":
                continue
            per_run = [diagnostics(rows) for rows in metrics]
            for r, d in zip(rs, per_run):
                diag.append(f"| {problem} | {n} | {minutes:g} | {searcher} | {r['seed']} | {d['generations']} | "
                            f"{f(d['best_found_in'], 'd')} | {f(d['valid'], '.1%')} | {f(d['novelty'], '.0%')} | "
                            f"{f(d['train_s'], '.1f')} | {f(d['grpo_s'], '.1f')} | {f(d['sample_s'], '.2f')} | "
                            f"{f(d['local_s'], '.1f')} | {f(d['gen0_s'], '.0f')} |")
            w = why(per_run)
            if w["generations"]:
                summary.append(f"| {problem} | {n} | {minutes:g} | {searcher} | {w['generations']:.0f} | "
                               f"{w['after_gen0']} of {w['runs']} | {f(w['valid'], '.1%')} | {f(w['novelty'], '.0%')} | "
                               f"{f(w['entered'], '.0%')} ({f(w['entered_last'], '.0%')}) | {f(w['train_s'], '.0%')} | "
                               f"{f(w['grpo_s'], '.0%')} | {f(w['sample_s'], '.1%')} | {f(w['local_s'], '.0%')} |")
        if img_dir is not None:
            suffix = "" if minutes == 10 else f"-m{minutes:g}"
            plot_size([r for r in records if r["minutes"] == minutes], runs, problem, n,
                      img_dir / f"discover-{problem}-{n}{suffix}.png")
    return "\n".join(lines + diag + summary)


def plot_size(records: list[dict], runs: Path, problem: str, n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours = {"local": "tab:gray", "patternboost": "tab:blue", "grpo": "tab:red"}
    bk = None
    for r in records:
        if (r["problem"], r["n"]) != (problem, n):
            continue
        pts = curve(_rows(run_dir(r, runs)))
        if not pts:
            continue
        bk = r["best_known"]
        t, b = zip(*pts)
        ax.step([x / 60 for x in t], b, where="post", color=colours.get(r["searcher"], "k"), alpha=0.8,
                label=r["searcher"] if r["seed"] == min(x["seed"] for x in records if x["searcher"] == r["searcher"])
                else None)
    if bk is not None:
        ax.axhline(bk, color="k", ls="--", lw=1, label=f"best known {bk:g}")
    ax.set_xlabel("minutes")
    ax.set_ylabel("best score")
    ax.set_title(f"{problem} n={n}: best score vs time, one line per seed")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, help="directory for the runs and runs.json")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", nargs="+", default=HARD, help="problem:n items (default: the issue's hard sizes)")
    ap.add_argument("--searchers", nargs="+", default=SEARCHERS, choices=SEARCHERS)
    ap.add_argument("--report", metavar="IMG_DIR", help="only print the table (and draw plots into IMG_DIR)")
    ap.add_argument("--collect", metavar="DIR", help="copy runs.json and the runs' metrics.csv and best.json to DIR")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    db = runs / "runs.json"
    records = json.loads(db.read_text()) if db.exists() else []
    if args.report:
        print(report(records, runs, Path(args.report)))
        return 0
    if args.collect:
        import shutil

        dest = Path(args.collect)
        for r in records:
            src = run_dir(r, runs)
            r["run"] = str(Path(*src.parts[-2:]))
            (dest / r["run"]).mkdir(parents=True, exist_ok=True)
            for name in ("metrics.csv", "best.json"):
                shutil.copy2(src / name, dest / r["run"] / name)
        (dest / "runs.json").write_text(json.dumps(records, indent=1) + "\n")
        return 0
    done = {(r["problem"], r["n"], r["searcher"], r["seed"], r["minutes"]) for r in records}
    for item in args.sizes:
        problem, n = item.rsplit(":", 1)
        for seed in args.seeds:
            order = args.searchers[seed % len(args.searchers):] + args.searchers[:seed % len(args.searchers)]
            for searcher in order:
                key = (problem, int(n), searcher, seed, args.minutes)
                if key in done:
                    continue
                out = runs / f"{problem}-{n}" / f"{searcher}-m{args.minutes:g}-s{seed}"
                wait_while_paused(runs)
                print(f"{time.strftime('%H:%M:%S')} {problem} n={n} {searcher} seed {seed} ...", flush=True)
                rec = run_one(problem, int(n), searcher, seed, args.minutes, out)
                records.append(rec)
                tmp = db.with_suffix(".tmp")
                tmp.write_text(json.dumps(records, indent=1) + "\n")
                tmp.replace(db)
                print(f"    best {rec['best_score']:g} (known {_fmt(rec['best_known'])}), other CPU "
                      f"{rec['other_cpu_share']:.0%}", flush=True)
    print(report(records, runs, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
