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
    sys.modules[spec.name] = mod  # its dataclass looks its module up there
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


def test_long_report_gives_each_run_its_15000_step_longest_and_learned_figures(tmp_path):
    """long_report.py's table: the 1,000-sample figures at 15,000 steps and at the longest
    evaluation from long.jsonl, the last in-training rate and the first step at >= 90%."""
    import json

    run = tmp_path / "rule-last2-mm"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"eval_task": "rule-last2"}}))
    rows = [(500, 0.5), (1000, 0.85), (1500, 0.92), (2000, 0.88), (40000, 0.995)]
    (run / "metrics.csv").write_text("step,train_loss,success_rate\n" + "".join(f"{s},0.7,{v}\n" for s, v in rows)
                                     + "40010,0.7,\n")
    evals = [(15000, 0.979), (50000, 0.994), (30000, 0.99)]
    (tmp_path / "long.jsonl").write_text("".join(
        json.dumps({"run": run.name, "steps": s, "eval_last": {"success_rate": v}}) + "\n" for s, v in evals))
    out = subprocess.run([sys.executable, str(ROOT / "examples/lecture/long_report.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    row = next(line for line in out.splitlines() if line.startswith(f"| {run.name} "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["rule-last2-mm", "rule-last2", "90% at 15,000", "40,010", "97.9%", "99.4% at 50,000", "99.5% at 40,000",
                     "1,500"]


def test_an_hours_stage_trains_until_the_runs_cumulative_time_and_then_is_done(tmp_path, monkeypatch):
    """A stage given in hours (the Fibonacci runs' "6 hours of CPU") ends when metrics.csv's
    cumulative elapsed_s reaches it; its row records the step reached, and a second driver
    finds it done and trains nothing."""
    import json

    config = tmp_path / "tiny.toml"
    config.write_text('[model]\ntype = "transformer"\nn_layer = 1\nn_head = 2\nn_embd = 16\n'
                      "[train]\nbatch_size = 8\neval_interval = 50\ncheckpoint_interval = 50\n")
    lr = long_runs()
    hours = 4 / 3600
    monkeypatch.setattr(lr, "STAGES", [("run", "rule-13-22", 200, config, lr.Hours(hours))])
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["long_runs.py", str(out), "--threads", "1"])
    lr.main()
    rows = [json.loads(line) for line in (out / "long.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["hours"] == hours
    assert rows[0]["elapsed_s"] == lr.elapsed_s(out / "run") >= 4.0
    assert rows[0]["steps"] == lr.last_step(out / "run") > 0
    assert 0.0 <= rows[0]["eval_last"]["success_rate"] <= 1.0
    before = (out / "run" / "metrics.csv").read_text()
    lr.main()
    assert (out / "run" / "metrics.csv").read_text() == before
    assert len((out / "long.jsonl").read_text().splitlines()) == 1
