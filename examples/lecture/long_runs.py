"""The lecture's long runs (issue 21), in resumable chunks.

    python examples/lecture/long_runs.py OUT [--only TASK ...] [--threads 1] [--max-hours H]

Each stage trains one task's run to a step count (continuing it with `seqlab train
--resume --steps N` when it exists: exact resume) or, for `Hours(h)` stages, until its
cumulative training time reaches h hours (`--minutes`), then scores 1,000 samples of its last
checkpoint with `seqlab eval --seed 0` and appends a row to OUT/long.jsonl. A finished stage
is skipped, so the script can be stopped at any time (kill its process group; at most one
checkpoint interval is lost) and started again to go on. Several copies can run at once
(one per core): a run being trained holds a lock (OUT/RUN.lock) and the others pass it
by. --max-hours stops starting new
training chunks after that long (the chunk in flight is cut at the deadline and resumed
next time).

A machine may not outlive a working session, so the runs' state can travel with the repository:
`--save-state DIR` copies what a resume needs of every run in OUT (its config, tokenizer,
metrics, best weights and latest checkpoint: ~3.5 MB for makemore's model) plus long.jsonl
into DIR and exits; `--restore-state DIR` first copies into OUT every run OUT lacks, then goes on
as usual.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
MAKEMORE = HERE / "makemore_like.toml"  # makemore's model and settings: the lecture's
SEQLAB_INIT = HERE / "seqlab_init.toml"  # the same settings on seqlab's default model and init
FIB = HERE / "fibonacci_400k.toml"


@dataclass(frozen=True)
class Hours:
    """A stage measured in time, not steps: train until the run's cumulative training time
    (metrics.csv's elapsed_s, which --resume carries on) reaches this many hours."""

    hours: float


# (run folder, task, lines in the data file, config, steps): stages in the order they run
STAGES = [
    ("rule-18-47-gpt2init", "rule-18-47", 100_000, SEQLAB_INIT, 15_000),
    ("rule-18-n20-gpt2init", "rule-18-n20", 100_000, SEQLAB_INIT, 15_000),
    ("rule-18-47-mm", "rule-18-47", 100_000, MAKEMORE, 15_000),
    ("rule-18-n20-mm", "rule-18-n20", 100_000, MAKEMORE, 15_000),
    ("rule-last2-mm", "rule-last2", 100_000, MAKEMORE, 15_000),
    ("rule-three-mm", "rule-three", 100_000, MAKEMORE, 15_000),
    ("rule-three-neg-mm", "rule-three-neg", 100_000, MAKEMORE, 15_000),
    ("fibonacci-2-400k", "fibonacci-2", 100_000, FIB, 100_000),
    ("fibonacci-400k", "fibonacci", 100_000, FIB, 100_000),
    ("rule-18-n20-mm", "rule-18-n20", 100_000, MAKEMORE, 50_000),
    ("rule-three-neg-mm", "rule-three-neg", 100_000, MAKEMORE, 50_000),
    ("rule-last2-mm", "rule-last2", 100_000, MAKEMORE, 50_000),
    ("rule-18-n20-mm", "rule-18-n20", 100_000, MAKEMORE, 150_000),
    ("rule-three-neg-mm", "rule-three-neg", 100_000, MAKEMORE, 150_000),
    # the "at least 6 hours of CPU" for each Fibonacci run (the lecture's "a day",
    # "overnight"): a time, because a step's time varies 0.035-0.08 s with the machine's load
    ("fibonacci-400k", "fibonacci", 100_000, FIB, Hours(6)),
    ("fibonacci-2-400k", "fibonacci-2", 100_000, FIB, Hours(6)),
]


def seqlab(*args, timeout=None) -> str:
    cmd = [sys.executable, "-m", "seqlab", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"failed: seqlab {' '.join(map(str, args))}\n{r.stderr[-2000:]}")
    return r.stdout


def done_rows(path: Path) -> set:
    if not path.exists():
        return set()
    rows = list(map(json.loads, path.read_text().splitlines()))
    return {(r["run"], Hours(r["hours"]) if "hours" in r else r["steps"]) for r in rows}


def last_step(run: Path) -> int:
    metrics = run / "metrics.csv"
    if not metrics.exists():
        return 0
    rows = [line.split(",") for line in metrics.read_text().splitlines()]
    return int(rows[-1][rows[0].index("step")]) if len(rows) > 1 else 0


def elapsed_s(run: Path) -> float:
    """The run's cumulative training time in seconds (0 before its first row)."""
    metrics = run / "metrics.csv"
    rows = [line.split(",") for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return float(rows[-1][rows[0].index("elapsed_s")]) if len(rows) > 1 else 0.0


RUN_FILES = ("config.json", "tokenizer.json", "metrics.csv", "best.json", "best.safetensors")


def save_state(out: Path, state: Path) -> None:
    """Copy each run's resumable state (latest checkpoint only) and long.jsonl into `state`."""
    state.mkdir(parents=True, exist_ok=True)
    if (out / "long.jsonl").exists():
        shutil.copy2(out / "long.jsonl", state / "long.jsonl")
    for run in sorted(p for p in out.iterdir() if (p / "checkpoints" / "latest").exists()):
        latest = (run / "checkpoints" / "latest").read_text().strip()
        dest = state / run.name
        tmp = state / f".{run.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "checkpoints").mkdir(parents=True)
        for name in RUN_FILES:
            if (run / name).exists():
                shutil.copy2(run / name, tmp / name)
        shutil.copytree(run / "checkpoints" / latest, tmp / "checkpoints" / latest)
        (tmp / "checkpoints" / "latest").write_text(latest + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)  # a run's saved state is replaced whole or not at all
        print(f"saved {run.name} at {latest}", flush=True)


def restore_state(state: Path, out: Path) -> None:
    """Copy into `out` every saved run it lacks (and long.jsonl rows it lacks)."""
    if (state / "long.jsonl").exists():
        have = done_rows(out / "long.jsonl")
        with open(out / "long.jsonl", "a") as f:
            for line in (state / "long.jsonl").read_text().splitlines():
                r = json.loads(line)
                if (r["run"], r["steps"]) not in have:
                    f.write(line + "\n")
    for saved in sorted(p for p in state.iterdir() if (p / "checkpoints" / "latest").exists()):
        if not (out / saved.name).exists():
            shutil.copytree(saved, out / saved.name)
            print(f"restored {saved.name}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--max-hours", type=float)
    ap.add_argument("--save-state", type=Path, help="copy the runs' resumable state here and exit")
    ap.add_argument("--restore-state", type=Path, help="first copy saved runs that OUT lacks from here")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.save_state:
        return save_state(out, args.save_state)
    if args.restore_state:
        restore_state(args.restore_state, out)
    results = out / "long.jsonl"
    deadline = time.time() + args.max_hours * 3600 if args.max_hours else float("inf")
    for name, task, n, config, steps in STAGES:
        if args.only and task not in args.only and name not in args.only or (name, steps) in done_rows(results):
            continue
        if time.time() >= deadline:
            break
        lock = open(out / f"{name}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another copy is training this run
            continue
        if (name, steps) in done_rows(results):  # finished while we waited for the lock
            continue
        data = out / f"{task}.txt"
        if not data.exists():
            seqlab("data", "make", task, "--out", data, "--n", n, "--seed", 0)
        run = out / name
        flags = ["--threads", args.threads, "--quiet", "--json"]
        if isinstance(steps, Hours):
            # the learning rate is constant in these configs, so the step bound is only a bound;
            # "at least": --minutes counts the start-up too, so a margin (a minute, less for tiny stages)
            left_s = max(steps.hours * 3600 - elapsed_s(run), 1.0)
            flags += ["--steps", 10_000_000, "--minutes", (left_s + min(left_s, 60.0)) / 60]
        else:
            flags += ["--steps", steps]
        if run.exists() and not any((run / "checkpoints").glob("step-*")):
            shutil.rmtree(run)  # stopped before its first checkpoint: start it again
        if run.exists():
            flags += ["--out", run, "--resume"]
        else:
            flags += ["--data", data, "--out", run, "--config", config, "--eval-task", task]
        t0 = time.time()
        try:
            seqlab("train", *flags, timeout=max(1.0, deadline - time.time()) if args.max_hours else None)
        except subprocess.TimeoutExpired:
            print(f"{task}: stopped at the deadline, step {last_step(run)}", flush=True)
            break
        ev = json.loads(seqlab("eval", run, "--task", task, "--n", 1000, "--checkpoint", "last", "--seed", 0,
                               "--json").strip().splitlines()[-1])
        row = {"run": name, "task": task, "steps": last_step(run) if isinstance(steps, Hours) else steps,
               "config": config.name, "chunk_wall_s": round(time.time() - t0, 1), "threads": int(args.threads),
               "eval_last": ev}
        if isinstance(steps, Hours):
            row |= {"hours": steps.hours, "elapsed_s": elapsed_s(run)}
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
