"""The loop shared by the post-training algorithms: load the starting run,
optimise a loss, log metrics, save a normal seqlab run directory (so that
`seqlab sample` and `seqlab eval` work on the result).

Each algorithm supplies `step_fn(step) -> (loss, stats)`; the loss is written
out in full in its own module (sft.py, dpo.py, grpo.py, ...).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import load_model, save_best, save_checkpoint
from ..errors import SeqlabError
from ..metrics import MetricsLog, read_metrics
from ..plots import dashboard, loss_curve
from ..train import Progress, lr_factor, make_optimizer
from .config import PostConfig


def load_policy(cfg: PostConfig):
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, tokenizer, run_cfg = load_model(cfg.policy, "best")
    if cfg.lora_rank > 0:
        from .lora import apply_lora

        model = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    return model, tokenizer, run_cfg


def rewards_for(cfg: PostConfig):
    """The config's reward functions, with its reasoning template."""
    from .rewards import build_rewards
    from .template import ReasoningTemplate

    template = ReasoningTemplate(cfg.system, cfg.reasoning_start, cfg.reasoning_end, cfg.solution_start,
                                 cfg.solution_end)
    return build_rewards(cfg.rewards, cfg.reward_weights, template)


def extra_columns(rows: list[dict]) -> list[str]:
    """Dataset columns other than the prompt: passed to reward functions as keyword lists."""
    return sorted({k for r in rows for k in r} - {"prompt"})


def prepare_out(cfg: PostConfig) -> Path:
    out = Path(cfg.out)
    if (out / "best.safetensors").exists() or (out / "checkpoints").exists():
        raise SeqlabError(f"{out} already holds a run; choose another out")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(Path(cfg.policy) / name, out / name)
    return out


def optimise(model, cfg: PostConfig, out: Path, columns: list[str], step_fn: Callable[[int], tuple],
             progress: bool, title: str, progress_keys: tuple[str, ...] = ("loss",),
             trained: torch.nn.Module | None = None) -> dict:
    """Run cfg.steps updates of step_fn's loss; returns the last step's stats.

    `trained` (default: model) is what the optimizer updates, e.g. policy + value
    model for PPO; `model` is what gets saved as the run's weights."""
    trained = trained if trained is not None else model
    trained.train()
    opt = make_optimizer(trained, cfg)
    log = MetricsLog(out / "metrics.csv", ["step", *columns, "lr", "grad_norm", "step_time_s", "elapsed_s"])
    bar = Progress(cfg.steps, 0, progress)
    stats: dict = {}
    started = time.perf_counter()
    done = 0
    try:
        for step in range(cfg.steps):
            if cfg.max_seconds and time.perf_counter() - started >= cfg.max_seconds:
                break
            t0 = time.perf_counter()
            lr = cfg.lr * lr_factor(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, stats = step_fn(step)
            if not math.isfinite(float(loss.detach())):
                raise SeqlabError(f"non-finite loss at step {step + 1}; stopped (lower post.lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trained.parameters(), cfg.grad_clip or float("inf"))
            opt.step()
            stats = {"loss": float(loss.detach()), **stats}
            row = {"step": step + 1, **{k: stats.get(k) for k in columns}, "lr": lr,
                   "grad_norm": round(float(grad_norm), 4), "step_time_s": round(time.perf_counter() - t0, 4),
                   "elapsed_s": round(time.perf_counter() - started, 2)}
            last = step + 1 == cfg.steps or (cfg.max_seconds and time.perf_counter() - started >= cfg.max_seconds)
            if (step + 1) % cfg.log_interval == 0 or last:
                log.log(row)
            bar.update(1, **{k: f"{stats[k]:.4f}" for k in progress_keys if stats.get(k) is not None})
            done = step + 1
    finally:
        bar.close()
        log.close()
    if cfg.lora_rank > 0:  # LoRA: keep the adapter, save merged weights as an ordinary run
        from .lora import merge_and_save

        model = merge_and_save(model, out)
    save_best(out, model, {"step": done, "algorithm": title, "lora_rank": cfg.lora_rank})
    save_checkpoint(out, done, model, {"optimizer": opt.state_dict()}, {"step": done}, keep=1)
    rows = read_metrics(out / "metrics.csv")
    for r in rows:  # the loss plot reads train_loss
        r["train_loss"] = r.get("loss", "")
    loss_curve(rows, out / "loss.png", title=title)
    dashboard(rows, [c for c in columns if c != "loss"] + ["loss", "lr", "grad_norm", "step_time_s"],
              out / "dashboard.png", title=title)
    return {**stats, "steps_done": done, "seconds": round(time.perf_counter() - started, 2)}
