"""The `seqlab discover` verb (wired into cli.py with `add_parser(sub)`).

    seqlab discover PROBLEM|module:Class --n N --out RUN [--searcher local|patternboost|grpo]
                    [--minutes M] [--seed S] [--resume] [--json]
    seqlab discover --list [--json]

Run directory of the `local` searcher:
    metrics.csv            one row per round (see METRICS_COLUMNS)
    best.json              the best distinct constructions (encoded) and their scores,
                           rewritten after every round, so an interrupted run resumes
    best.png               a drawing of the best construction
    pool.txt               every kept construction, encoded, best first (training data)
    record-<score>.json    written when a construction beats the best known value

Progress goes to stderr; with --json the last stdout line is one JSON object
with best_score, best_known (null if none) and generations (per-round stats).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from ..errors import SeqlabError, ready

SEARCHERS = ("local", "patternboost", "grpo")
METRICS_COLUMNS = ["round", "seconds", "moves", "new", "distinct", "pool_size", "mean", "median", "top20", "max",
                   "best",
                   # model-based searchers only (one row per generation; round = generation)
                   "decodable", "valid_before_repair", "novelty", "train_s", "sample_s", "grpo_s", "local_s",
                   "moves_per_start"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    d = subparsers.add_parser("discover", help="search for combinatorial constructions (PatternBoost-style)",
                              description="Search for constructions of a built-in problem (see --list) or a user "
                                          "problem class given as module:Class or file.py:Class.")
    d.add_argument("problem", nargs="?", help="built-in problem name or module:Class / file.py:Class")
    d.add_argument("--list", action="store_true", help="list the built-in problems and their best-known values")
    d.add_argument("--n", type=int, help="problem size (required)")
    d.add_argument("--out", help="run directory (required)")
    d.add_argument("--searcher", choices=SEARCHERS, default="patternboost",
                   help="local search alone, PatternBoost (default), or PatternBoost + GRPO on the score")
    d.add_argument("--minutes", type=float, default=1.0, help="wall-clock budget (default 1)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int, help="worker processes (default: all CPU cores; with --ray: the cluster's)")
    d.add_argument("--ray", metavar="auto|local|ADDRESS",
                   help="run the local searches as Ray tasks: on the running cluster (auto), a private local "
                        "Ray instance (local) or the cluster at ADDRESS; needs pip install 'seqlab[ray]'")
    d.add_argument("--target", help="stop once the best score reaches this value ('best-known': the table's)")
    d.add_argument("--round-seconds", type=float, help="length of one round (default minutes*6, 2..60 s)")
    d.add_argument("--keep", type=int,
                   help="distinct constructions kept in the pool (default 1000 for local, 2000 for the model loop)")
    d.add_argument("--resume", action="store_true", help="continue the run in --out from its best constructions")
    d.add_argument("--device", default="cpu", help="the model's device: cpu, cuda, cuda:N or mps (the local "
                                                  "searches run on the CPU cores)")
    d.add_argument("--quiet", action="store_true", help="no per-round progress on stderr")
    d.add_argument("--json", action="store_true", help="print one JSON object of results on stdout")
    d.set_defaults(func=cmd_discover)
    return d


def _say(args, text: str) -> None:
    """A line for the user: stdout normally, stderr under --json (stdout is the JSON's)."""
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def _fmt(v) -> str:
    return "-" if v is None else f"{v + 0.0:g}" if isinstance(v, float) else str(v)  # + 0.0: no "-0"


def cmd_list(args) -> None:
    from .problems import list_problems

    rows = list_problems()
    if args.json:
        print(json.dumps({"problems": [{**r, "best_known": {str(k): v for k, v in r["best_known"].items()}}
                                       for r in rows]}))
        return
    for r in rows:
        items = [f"{n}:{v + 0.0:g}" for n, v in r["best_known"].items()]
        shown = ", ".join(items if len(items) <= 14 else items[:9] + ["..."] + items[-4:])
        print(f"{r['name']:<18} {r['description']}")
        print(f"{'':<18} best known (n:score): {shown}")


def _read_best(out: Path, problem) -> tuple[list, int, float, int]:
    """A resumed run's constructions, next round number, elapsed seconds and moves so far."""
    path = out / "best.json"
    if not path.exists():
        raise SeqlabError(f"{out}: nothing to resume (no best.json)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("problem") != problem.name or data.get("n") != problem.n:
        raise SeqlabError(f"{out}: holds problem {data.get('problem')} n={data.get('n')}, "
                          f"not {problem.name} n={problem.n}")
    init = []
    pool = out / "pool.txt"
    lines = pool.read_text(encoding="utf-8").splitlines() if pool.exists() else []
    for s in lines + [c["encoded"] for c in data.get("constructions", [])]:
        c = problem.decode(s)
        if c is not None and problem.is_valid(c):
            init.append(c)
    return init, int(data.get("rounds", 0)), float(data.get("seconds", 0.0)), int(data.get("moves", 0))


def cmd_discover(args) -> None:
    if args.list:
        ready(args, "list the problems")
        return cmd_list(args)
    if not args.problem:
        raise SeqlabError("seqlab discover: give a PROBLEM (see seqlab discover --list) or --list")
    if args.n is None:
        raise SeqlabError("seqlab discover: --n is required")
    if not args.out:
        raise SeqlabError("seqlab discover: --out is required")
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise SeqlabError(f"seqlab discover: --minutes must be a positive number, got {args.minutes}")
    for flag, value in (("keep", args.keep), ("workers", args.workers)):
        if value is not None and value < 1:
            raise SeqlabError(f"seqlab discover: --{flag} must be >= 1, got {value}")
    if args.round_seconds is not None and not args.round_seconds > 0:
        raise SeqlabError(f"seqlab discover: --round-seconds must be positive, got {args.round_seconds}")
    from ..engine import resolve_device
    from .problems import get_problem

    resolve_device(args.device)  # a device this machine lacks fails now, not after the first search
    problem = get_problem(args.problem, args.n)
    best_known = problem.best_known(problem.n) if hasattr(problem, "best_known") else None
    target = None
    if args.target is not None:
        if args.target == "best-known":
            if best_known is None:
                raise SeqlabError(f"problem '{problem.name}' has no best-known value for n={problem.n}")
            target = best_known
        else:
            try:
                target = float(args.target)
            except ValueError:
                raise SeqlabError(f"--target must be a number or 'best-known', got {args.target!r}") from None
    out = Path(args.out)
    ready(args, f"{'resume' if args.resume else 'search'} into {out}")
    init, round0, sec0, moves0 = [], 0, 0.0, 0
    if args.resume:
        init, round0, sec0, moves0 = _read_best(out, problem)
    elif (out / "best.json").exists():  # (metrics.csv alone: a run that ended before its first round)
        raise SeqlabError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    run_search(args, problem, out, best_known, target, init, round0, sec0, moves0)


def _write_best(out: Path, problem, result, best_known, args, rounds: int, seconds: float, moves: int,
                top: int = 20) -> None:
    from ..atomic import write_json

    write_json(out / "best.json", {
        "problem": problem.name, "spec": getattr(problem, "spec", problem.name), "n": problem.n,
        "searcher": args.searcher, "seed": args.seed, "rounds": rounds, "seconds": round(seconds, 3),
        "moves": int(moves),
        "best_score": result.best_score, "best_known": best_known,
        "constructions": [{"encoded": problem.encode(c), "score": s}
                          for c, s in zip(result.best[:top], result.scores[:top])]})


def _pool_top(problem, pool_out: Path, top: int = 20):
    """The best `top` constructions of the pool file (best first), as a LocalResult."""
    from .local import LocalResult

    best, scores = [], []
    lines = pool_out.read_text(encoding="utf-8").splitlines()[:top] if pool_out.exists() else []
    for line in lines:
        c = problem.decode(line)
        if c is not None and problem.is_valid(c):
            best.append(c)
            scores.append(float(problem.score(c)))
    return LocalResult(best=best, scores=scores)


def run_search(args, problem, out: Path, best_known, target, init, round0: int, sec0: float,
               moves0: int = 0) -> None:
    """round0, sec0, moves0: where a resumed run's counts go on from (0 for a new run)."""
    from ..atomic import write_json
    from .local import run_local

    metrics_path = out / "metrics.csv"
    new_file = not (args.resume and metrics_path.exists())  # a fresh run replaces a failed run's leftovers
    f = metrics_path.open("w" if new_file else "a", encoding="utf-8", newline="")
    writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
    if new_file:
        writer.writeheader()
    state = {"best": max((problem.score(c) for c in init), default=None), "reached": False, "records": set()}
    if state["best"] is not None and best_known is not None and state["best"] >= best_known:
        state["reached"] = True
    generations = []
    plotted: list[dict] = []

    def record(c, score) -> None:
        """Save (atomically) and print a construction that beats the best known value."""
        if score in state["records"] or not problem.is_valid(c):
            return
        state["records"].add(score)
        path = out / f"record-{score:g}.json"
        write_json(path, {"problem": problem.name, "n": problem.n, "score": score, "best_known": best_known,
                          "encoded": problem.encode(c), "construction": [int(x) for x in c], "seed": args.seed})
        _say(args, f"NEW RECORD for {problem.name} n={problem.n}: score {score:g} > best known {best_known:g}; "
                   f"saved in {path}\n{problem.encode(c)}\n{problem.pretty(c)}")

    def on_round(entry: dict, numbered_on: bool = False) -> None:
        """numbered_on: the searcher already numbers on from the resumed run (PatternBoost's generations)."""
        entry = {**entry, "round": entry["round"] + (0 if numbered_on else round0),
                 "seconds": round(entry["seconds"] + sec0, 3), "moves": entry["moves"] + moves0}
        plotted.append(entry)
        entry = {k: v for k, v in entry.items() if k != "scores"}  # the pool's scores: for the picture only
        generations.append(entry)
        writer.writerow({k: ("" if v is None else v) for k, v in entry.items()})
        f.flush()
        # what --resume needs, after every round: a kill loses at most the round under way
        _write_best(out, problem, _pool_top(problem, pool_out), best_known, args, entry["round"] + 1,
                    entry["seconds"], entry["moves"])
        if not args.quiet:
            print(f"round {entry['round']}: {entry['seconds']:.1f}s best {_fmt(entry['best'])} "
                  f"(best known {_fmt(best_known)}) pool {entry['pool_size']} "
                  f"mean {_fmt(None if entry['mean'] is None else round(entry['mean'], 3))} "
                  f"moves {entry['moves']:,}", file=sys.stderr, flush=True)
        best = entry["best"]
        if best is None or best_known is None or best < best_known:
            return
        if not state["reached"]:
            state["reached"] = True
            verb = "beats" if best > best_known else "reaches"
            _say(args, f"{problem.name} n={problem.n}: score {_fmt(best)} {verb} the best known {_fmt(best_known)} "
                       f"after {entry['seconds']:.1f}s")
        if best > best_known and best not in state["records"]:
            first = pool_out.read_text(encoding="utf-8").split("\n", 1)[0]  # the pool file is best first
            c = problem.decode(first)
            if c is not None:
                record(c, float(problem.score(c)))

    pool_out = out / "pool.txt"
    if args.searcher == "local":
        result = run_local(problem, seconds=args.minutes * 60, seed=args.seed, workers=args.workers,
                           pool_out=pool_out, round_seconds=args.round_seconds, target=target, keep=args.keep or 1000,
                           first_round=round0, ray=args.ray,
                           init=init, progress=on_round)
    else:  # a resumed run continues from its pool and its newest generation's model
        from .patternboost import PatternBoostConfig, run_patternboost

        cfg = PatternBoostConfig(**({"keep": args.keep} if args.keep else {}), device=args.device)
        result = run_patternboost(problem, out, seconds=args.minutes * 60, seed=args.seed, workers=args.workers,
                                  cfg=cfg,
                                  init=init, target=target, pool_out=pool_out, use_grpo=args.searcher == "grpo",
                                  last_logged=round0 - 1 if args.resume else None, ray=args.ray,
                                  progress=lambda e: on_round({**e, "round": e["generation"]}, numbered_on=True))
    f.close()
    rounds = plotted[-1]["round"] + 1 if plotted else round0
    seconds = sec0 + result.seconds
    if not result.best:
        raise SeqlabError(f"{problem.name} n={problem.n}: the search found no valid construction")
    _write_best(out, problem, result, best_known, args, rounds, seconds, moves0 + result.moves)
    best_c, best_s = result.best[0], result.scores[0]
    from .plots import draw_progress

    draw_progress(plotted, out / "progress.png", f"{problem.name} n={problem.n}, searcher {args.searcher}", best_known)
    try:
        problem.draw(best_c, out / "best.png")
    except NotImplementedError:
        pass
    if best_known is not None and best_s > best_known:
        record(best_c, best_s)
    payload = {"best_score": best_s, "best_known": best_known, "generations": generations,
               "problem": problem.name, "n": problem.n, "searcher": args.searcher, "seconds": round(seconds, 3),
               "moves": moves0 + result.moves, "best": problem.encode(best_c), "run": str(out)}
    if args.json:
        print(json.dumps(payload))
    else:
        print(f"{problem.name} n={problem.n}: best score {_fmt(best_s)} (best known {_fmt(best_known)}) after "
              f"{len(result.log)} rounds, {result.moves:,} moves, {result.seconds:.1f}s; run saved in {out}")
