"""The README's main job: make a built-in dataset, train a small transformer on
the CPU, sample from it and score the samples with the task's verifier."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from .. import atomic
from ..checkpoint import load_model
from ..config import run_config_from_dict
from ..data.tasks import get_task, make_lines
from ..generate_text import sample_text
from ..train import train

TASK = "rule-13-22"  # the lecture's first experiment: the 13th digit equals the 22nd


def quickstart(out: str | Path, steps: int | None = None, seed: int = 1337, progress: bool = True,
               log: Callable[[str], None] = print, n_samples: int = 500, device: str = "cpu") -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    task = get_task(TASK)
    data_path = out.parent / f"{out.name}-{TASK}.txt"
    lines = make_lines(task, task.default_n, seed)
    atomic.write_text(data_path, "\n".join(lines) + "\n")
    log(f"[1/3] wrote {len(lines)} examples of '{TASK}' ({task.description}) to {data_path}")
    cfg = run_config_from_dict({
        "data": {"path": str(data_path)},
        "model": {"type": "transformer", "n_layer": 2, "n_head": 4, "n_embd": 64},
        "train": {"steps": steps if steps is not None else 3000, "batch_size": 32, "lr": 2e-3,
                  "eval_interval": 250, "checkpoint_interval": 500, "seed": seed, "threads": 1,
                  "device": device},
    })
    log(f"[2/3] training a {cfg.model.n_layer}-layer transformer for {cfg.train.steps} steps into {out}")
    result = train(cfg, out, progress=progress)
    model, tokenizer, _ = load_model(out, device=device)
    with torch.inference_mode():
        s = sample_text(model, tokenizer, n_samples, seed=seed, device=torch.device(device))
    checks = [task.check(t) for t in s.texts]
    success = sum(ok for _, ok in checks) / len(checks)
    wellformed = sum(w for w, _ in checks) / len(checks)
    train_set = set(lines)
    novelty = sum(t not in train_set for t in s.texts) / len(s.texts)
    log(f"[3/3] {n_samples} samples, e.g.: " + "  ".join(s.texts[:8]))
    log(f"      rule success {success:.1%} (13th digit == 22nd), well-formed {wellformed:.1%}, "
        f"new (not in training data) {novelty:.1%}, validation loss {result['best_val_loss']:.4f}")
    return {"step": result["step"], "val_loss": result["best_val_loss"], "success_rate": success,
            "wellformed_rate": wellformed, "novelty": novelty, "samples": s.texts[:20],
            "seconds": round(time.perf_counter() - t0, 2), "run": str(out)}
