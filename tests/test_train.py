"""Training loop: exact resume (also after SIGKILL), determinism, accumulation, NaN stop."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from seqlab import checkpoint as ckpt
from seqlab.config import run_config_from_dict
from seqlab.engine import Engine
from seqlab.errors import SeqlabError
from seqlab.train import train

from conftest import seqlab_cmd


def cfg_for(data, **train_kw):
    train_kw = {"steps": 30, "batch_size": 8, "eval_interval": 10, "checkpoint_interval": 10,
                "log_interval": 1, "warmup_steps": 5, **train_kw}
    return run_config_from_dict({
        "data": {"path": str(data)},
        "model": {"type": "transformer", "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.1},
        "train": train_kw,
    })


def losses(run):
    with open(run / "metrics.csv") as f:
        return [(r["step"], r["train_loss"], r["val_loss"]) for r in csv.DictReader(f)]


def test_run_directory_contents(words_file, tmp_path):
    out = tmp_path / "run"
    res = train(cfg_for(words_file), out, progress=False)
    assert res["step"] == 30
    for name in ("config.json", "tokenizer.json", "best.safetensors", "best.json", "metrics.csv", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    last = ckpt.latest_checkpoint(out)
    assert last.name == "step-00000030"
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000020", "step-00000030"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved best weights reproduce the recorded best validation loss
    model, tok, cfg = ckpt.load_model(out, "best")
    import json
    best = json.loads((out / "best.json").read_text())
    from seqlab.train import evaluate, prepare_data
    data = prepare_data(cfg, tok)
    assert evaluate(model, data.val, tok.pad_id, torch.device("cpu")) == pytest.approx(best["val_loss"], abs=1e-6)


def test_same_seed_same_curve_and_other_seed_differs(words_file, tmp_path):
    train(cfg_for(words_file), tmp_path / "a", progress=False)
    train(cfg_for(words_file), tmp_path / "b", progress=False)
    train(cfg_for(words_file, seed=7), tmp_path / "c", progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def test_resume_equals_uninterrupted(words_file, tmp_path, monkeypatch):
    train(cfg_for(words_file), tmp_path / "full", progress=False)
    real_save = Engine.save

    def save_then_die(self, step, *a, **kw):
        path = real_save(self, step, *a, **kw)
        if step == 20:
            raise KeyboardInterrupt  # interrupted right after the step-20 checkpoint
        return path

    monkeypatch.setattr(Engine, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(words_file), tmp_path / "part", progress=False)
    monkeypatch.setattr(Engine, "save", real_save)
    assert len(losses(tmp_path / "part")) == 20
    train(cfg_for(words_file), tmp_path / "part", resume=True, progress=False)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_refuses_to_overwrite_a_run_without_resume(words_file, tmp_path):
    train(cfg_for(words_file, steps=10), tmp_path / "r", progress=False)
    with pytest.raises(SeqlabError, match="already holds a run; pass --resume"):
        train(cfg_for(words_file, steps=10), tmp_path / "r", progress=False)


def test_resume_after_sigkill_between_checkpoints(words_file, tmp_path):
    args = ["train", "--data", words_file, "--model", "transformer", "--n-layer", "2", "--n-head", "2",
            "--n-embd", "16", "--batch-size", "8", "--eval-interval", "50", "--checkpoint-interval", "100",
            "--steps", "1000", "--quiet"]
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nlog_interval = 1\n")
    full = tmp_path / "full"
    subprocess.run(seqlab_cmd(*args, "--out", full, "--config", cfg), check=True, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(seqlab_cmd(*args, "--out", run, "--config", cfg),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        last = ckpt.latest_checkpoint(run)
        if last is not None and (run / "metrics.csv").exists():
            rows = (run / "metrics.csv").read_text().count("\n") - 1
            if int(last.name.removeprefix("step-")) + 10 < rows < 990:  # between two checkpoints
                proc.send_signal(signal.SIGKILL)
                killed_at = rows
                break
        time.sleep(0.002)
    proc.wait()
    # 1000 steps of ~2 ms and a check every 2 ms: a kill that misses is a broken test, not luck
    assert killed_at is not None, "the run ended before the kill landed"
    assert (run / "metrics.csv").read_text().count("\n") - 1 < 1000  # killed mid-way, not finished
    assert int(ckpt.latest_checkpoint(run).name.removeprefix("step-")) < killed_at
    subprocess.run(seqlab_cmd(*args, "--out", run, "--config", cfg, "--resume"), check=True, capture_output=True)
    assert losses(run) == losses(full)
    assert len(losses(run)) == 1000


def test_grad_accumulation_equivalence_without_dropout(words_file, tmp_path):
    def run(name, bs, acc):
        cfg = cfg_for(words_file, steps=3, batch_size=bs, grad_accum=acc, checkpoint_interval=3)
        cfg.model.dropout = 0.0
        train(cfg, tmp_path / name, progress=False)
        return ckpt.load_model(tmp_path / name, "last")[0].state_dict()

    wa, wb = run("a", 8, 1), run("b", 1, 8)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    wc = run("c", 4, 1)  # a different batch gives different weights: the test can fail
    assert any(not torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(words_file, tmp_path, monkeypatch):
    import seqlab.train as tr

    real_build = tr.build_for_run

    def poisoned(cfg, vocab):
        model = real_build(cfg, vocab)
        calls = {"n": 0}
        real_forward = model.forward

        def forward(idx, targets=None, loss_reduction="mean", **packed):
            logits, loss = real_forward(idx, targets, loss_reduction, **packed)
            calls["n"] += model.training  # count training forwards only (one per step here)
            if model.training and calls["n"] == 15:
                loss = loss * float("nan")
            return logits, loss

        model.forward = forward
        return model

    monkeypatch.setattr(tr, "build_for_run", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(SeqlabError, match=r"non-finite loss or gradient at step 15 .*step-00000010"):
        train(cfg_for(words_file), out, progress=False)
    assert ckpt.latest_checkpoint(out).name == "step-00000010"
    assert max(int(s) for s, _, _ in losses(out)) == 14


def test_atomic_write_survives_sigkill(tmp_path):
    target = tmp_path / "f.txt"
    code = f"""
import sys
sys.path.insert(0, {str(os.path.dirname(os.path.dirname(__file__)) + '/src')!r})
from seqlab import atomic
i = 0
while True:
    atomic.write_text({str(target)!r}, ("AB"[i % 2]) * 2_000_000)
    i += 1
    print(i, flush=True)
"""
    for delay in (0.3, 0.45, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        proc.stdout.readline()  # at least one complete write
        time.sleep(delay)
        proc.kill()
        proc.wait()
        text = target.read_text()
        assert len(text) == 2_000_000 and len(set(text)) == 1


def test_bf16_autocast_trains_on_cpu(words_file, tmp_path):
    cfg = cfg_for(words_file, steps=20, dtype="bfloat16", checkpoint_interval=20)
    res = train(cfg, tmp_path / "bf16", progress=False)
    fp32 = train(cfg_for(words_file, steps=20, checkpoint_interval=20), tmp_path / "fp32", progress=False)
    assert res["step"] == 20 and abs(res["val_loss"] - fp32["val_loss"]) < 0.1
    assert res["val_loss"] != fp32["val_loss"]  # bf16 really was used


@pytest.mark.slow
def test_torch_compile_matches_eager(words_file, tmp_path):
    cfg = cfg_for(words_file, steps=10, compile=True, checkpoint_interval=10)
    cfg.model.dropout = 0.0
    res = train(cfg, tmp_path / "c", progress=False)
    eager = cfg_for(words_file, steps=10, checkpoint_interval=10)
    eager.model.dropout = 0.0
    ref = train(eager, tmp_path / "e", progress=False)
    assert res["val_loss"] == pytest.approx(ref["val_loss"], abs=2e-2)


def test_atomic_writes_get_the_modes_of_plain_writes(tmp_path):
    """mkstemp/mkdtemp make 0600/0700 temporaries; the renamed results follow the umask like
    open() and mkdir() (a run shared with a group stays readable)."""
    import os

    from seqlab import atomic

    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
        with atomic.atomic_dir(tmp_path / "d") as d:
            (d / "w.bin").write_bytes(b"1")
        os.umask(0o077)
        atomic.write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "w.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


def test_a_deadline_ends_training_like_a_last_step(words_file, tmp_path):
    """A passed deadline: one step, then evaluated, logged and checkpointed as the run's end,
    and --resume carries on from there to the configured steps."""
    out = tmp_path / "run"
    res = train(cfg_for(words_file), out, progress=False, deadline=time.perf_counter())
    assert res["step"] == 1 and res["val_loss"] is not None
    assert ckpt.latest_checkpoint(out).name.endswith("1") and losses(out)[-1][0] == "1"
    assert losses(out)[-1][2] != ""  # evaluated at the stop
    assert train(cfg_for(words_file), out, resume=True, progress=False)["step"] == 30
