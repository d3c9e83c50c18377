"""examples/lecture/long_runs.py: a run's saved state (latest checkpoint only) resumes exactly
where the run itself does (the long runs travel between machines this way)."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def long_runs():
    spec = importlib.util.spec_from_file_location("long_runs", ROOT / "examples/lecture/long_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def seqlab(*args):
    subprocess.run([sys.executable, "-m", "seqlab", *map(str, args)], check=True, capture_output=True)


def losses(run: Path) -> dict[int, str]:
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): r["train_loss"] for r in csv.DictReader(f)}


def test_saved_state_resumes_exactly_like_the_run(tmp_path):
    data = tmp_path / "r.txt"
    seqlab("data", "make", "rule-13-22", "--out", data, "--n", 200, "--seed", 0)
    out, state, moved = tmp_path / "out", tmp_path / "state", tmp_path / "moved"
    seqlab("train", "--data", data, "--out", out / "run", "--steps", 20, "--checkpoint-interval", 10,
           "--eval-interval", 10, "--n-layer", 1, "--n-embd", 16, "--n-head", 2, "--threads", 1, "--quiet")
    (out / "long.jsonl").write_text('{"run": "run", "steps": 20}\n')
    lr = long_runs()
    lr.save_state(out, state)
    assert sorted(p.name for p in (state / "run" / "checkpoints").iterdir()) == ["latest", "step-00000020"]
    moved.mkdir()
    lr.restore_state(state, moved)
    lr.restore_state(state, moved)  # again: nothing is duplicated
    assert (moved / "long.jsonl").read_text() == (out / "long.jsonl").read_text()
    for run in (out / "run", moved / "run"):
        seqlab("train", "--out", run, "--resume", "--steps", 40, "--threads", 1, "--quiet")
    a, b = losses(out / "run"), losses(moved / "run")
    assert max(a) == 40 and a == b
