"""The loop shared by the post-training algorithms: load the starting run,
optimise a loss, log metrics, save a normal seqlab run directory (so that
`seqlab sample` and `seqlab eval` work on the result).

Each algorithm supplies `step_fn(step) -> (loss, stats)`; the loss is written
out in full in its own module (sft.py, dpo.py, grpo.py, ...).

Checkpoints (every `checkpoint_interval` updates, rounded up to the algorithm's
`boundary`: a rollout's reuse period, a rejection round) hold the trained
modules, the optimizer, the global RNG and the algorithm's sampling generator,
so `resume = true` (CLI `--resume`) continues exactly where an interrupted run
stopped: at a boundary the algorithm regenerates its rollout state from the
restored generator, and everything built from the starting policy before the
loop (reference model, DPO reference log-probs) is rebuilt from `policy`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from .. import atomic
from ..checkpoint import (QUANTIZATION, latest_checkpoint, load_model, load_quantization, release_freed_memory,
                          save_best)
from ..engine import Engine, OptimSettings, Progress, autocast_dtype, barrier, resolve_device, set_threads
from ..engine import ranks as process_ranks
from ..errors import SeqlabError
from ..metrics import MetricsLog, read_metrics
from ..models.base import disable_dropout
from ..plots import dashboard, loss_curve
from .config import PostConfig


def load_policy(cfg: PostConfig, drop_dropout: bool):
    """The starting model (LoRA-wrapped when asked). `drop_dropout` is the algorithm's
    default for cfg.disable_dropout: with dropout on, the model being updated is a random
    thinning of the one that sampled the rollouts (or produced the reference log-probs),
    so even the first update's importance ratio is not 1."""
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    from ..models.lora import apply_lora, has_adapter

    if has_adapter(cfg.policy):
        raise SeqlabError(f"{cfg.policy}: a LoRA run kept as base + adapter (post.lora_merge = false); "
                          f"post-train its base run again, or a run saved with lora_merge = true")
    if load_quantization(cfg.policy) is not None and cfg.lora_rank == 0:
        raise SeqlabError(f"{cfg.policy}: a quantized run trains only LoRA adapters on its frozen 8-/4-bit "
                          f"weights (QLoRA): set post.lora_rank > 0, or post-train the float run it came from")
    model, tokenizer, run_cfg = load_model(cfg.policy, "best", device=str(device))
    if cfg.lora_rank > 0:
        model = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets).to(device)
    if cfg.disable_dropout if cfg.disable_dropout is not None else drop_dropout:
        disable_dropout(model)  # after LoRA: its dropout (lora_dropout) goes too
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


def prepare_out(cfg: PostConfig, algorithm: str) -> Path:
    """The run folder: checked on resume (same algorithm and policy as the run it continues),
    fresh otherwise, with the post-training settings in post_config.json (rank 0 writes;
    every rank waits until the folder is ready)."""
    r = process_ranks()
    out = _check_out(cfg, algorithm)
    if r.main and not cfg.resume:
        out.mkdir(parents=True, exist_ok=True)
        (out / "samples.jsonl").unlink(missing_ok=True)  # a killed earlier try's samples do not carry over
        for name in ("config.json", "tokenizer.json"):  # the model's: the result samples like any run
            shutil.copyfile(Path(cfg.policy) / name, out / name)
        atomic.write_json(out / "post_config.json", {"algorithm": algorithm, **dataclasses.asdict(cfg)})
    barrier(r)
    return out


def _check_out(cfg: PostConfig, algorithm: str) -> Path:
    out = Path(cfg.out)
    if cfg.resume:
        if latest_checkpoint(out) is None:
            raise SeqlabError(f"{out}: nothing to resume (no checkpoint found)")
        saved = out / "post_config.json"
        before = json.loads(saved.read_text(encoding="utf-8")) if saved.exists() else {}
        for key, now in (("algorithm", algorithm), ("policy", cfg.policy)):
            if key in before and before[key] != now:
                raise SeqlabError(f"{out}: a {before['algorithm']} run of policy {before['policy']}; "
                                  f"--resume cannot continue it with {key} {now}")
        return out
    if (out / "best.safetensors").exists() or (out / "checkpoints").exists():
        raise SeqlabError(f"{out} already holds a run; pass --resume to continue it or choose another out")
    return out


def _drop_samples_after(out: Path, step: int) -> None:
    """Samples logged after the checkpoint a run resumes from are logged again: drop them."""
    samples = out / "samples.jsonl"
    if samples.exists():
        lines = samples.read_text(encoding="utf-8").splitlines()
        atomic.write_text(samples, "".join(x + "\n" for x in lines if json.loads(x).get("step", 0) < step))


def optimise(model, cfg: PostConfig, out: Path, columns: list[str], step_fn: Callable[[int], tuple],
             progress: bool, title: str, progress_keys: tuple[str, ...] = ("loss",),
             trained: torch.nn.Module | None = None, generator: torch.Generator | None = None,
             boundary: int = 1) -> dict:
    """Run cfg.steps updates of step_fn's loss; returns the last step's stats.

    `trained` (default: model) is what the optimizer updates, e.g. policy + value
    model for PPO; `model` is what gets saved as the run's weights. `generator` is
    the algorithm's sampling RNG (saved for resume); checkpoints fall on multiples
    of `boundary` updates, where step_fn keeps no state from earlier updates."""
    trained = trained if trained is not None else model
    trained.train()
    device = next(trained.parameters()).device
    engine = Engine(trained, OptimSettings.of(cfg), device=device, amp=autocast_dtype(cfg.dtype, device), run_dir=out,
                    generators={"sampling": generator} if generator is not None else None, hint="lower post.lr")
    start, elapsed_before = 0, 0.0
    if cfg.resume:
        start, loop_state = engine.restore()
        elapsed_before = loop_state["elapsed_s"]
        if engine.ranks.main:
            _drop_samples_after(out, start)
    interval = max(1, math.ceil(cfg.checkpoint_interval / boundary)) * boundary
    # a fresh run keeps no rows (start = 0): a killed earlier try's log does not carry over
    main = engine.ranks.main  # rank 0 alone writes
    log = MetricsLog(out / "metrics.csv" if main else None,
                     ["step", *columns, "lr", "grad_norm", "step_time_s", "elapsed_s"], keep_until_step=start)
    bar = Progress(cfg.steps, start, progress and main)
    stats: dict = {}
    started = time.perf_counter() - elapsed_before
    done = start

    def elapsed():
        return {"elapsed_s": time.perf_counter() - started}

    try:
        for step in range(start, cfg.steps):
            # the time budget ends a run only at a rollout boundary, so its final checkpoint
            # holds no half-used rollout (and a resume continues exactly)
            if cfg.max_seconds and step % boundary == 0 and time.perf_counter() - started >= cfg.max_seconds:
                break
            t0 = time.perf_counter()

            def compute():
                # step_fn returns its loss for the engine's backward, or (micro-batches: GRPO's
                # micro_batch) has accumulated the gradients itself and returns the loss's value
                nonlocal stats
                loss, stats = step_fn(step)
                return loss

            upd = engine.update(step, compute)
            stats = {"loss": upd.loss, **stats}
            row = {"step": step + 1, **{k: stats.get(k) for k in columns}, "lr": upd.lr,
                   "grad_norm": round(upd.grad_norm, 4), "step_time_s": round(time.perf_counter() - t0, 4),
                   "elapsed_s": round(time.perf_counter() - started, 2)}
            last = step + 1 == cfg.steps or (cfg.max_seconds and (step + 1) % boundary == 0
                                             and time.perf_counter() - started >= cfg.max_seconds)
            if (step + 1) % cfg.log_interval == 0 or last:
                log.log(row)
            bar.update(1, **{k: f"{stats[k]:.4f}" for k in progress_keys if stats.get(k) is not None})
            done = step + 1
            if done % interval == 0 and done < cfg.steps:
                engine.save(done, elapsed())
    finally:
        bar.close()
        log.close()
    if done > start or not cfg.resume:
        engine.save(done, elapsed())
    if not main:
        return {**stats, "steps_done": done, "seconds": round(time.perf_counter() - started, 2)}
    quantized = load_quantization(cfg.policy) is not None
    merge = cfg.lora_merge if cfg.lora_merge is not None else not quantized
    if cfg.lora_rank > 0 and merge:  # LoRA: keep the adapter, save merged weights as an ordinary run
        from ..models.lora import merge_and_save

        model = merge_and_save(model, out)
    elif cfg.lora_rank > 0:  # base + adapter: the base's weights as they were (quantized stays quantized)
        from ..models.lora import save_apart

        model = save_apart(model, out, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if quantized:
            shutil.copyfile(Path(cfg.policy) / QUANTIZATION, out / QUANTIZATION)
    save_best(out, model, {"step": done, "algorithm": title, "lora_rank": cfg.lora_rank})
    rows = read_metrics(out / "metrics.csv")
    if done == start and rows:  # nothing ran (a finished run resumed): report the last logged row
        stats = {k: float(rows[-1][k]) for k in columns if rows[-1].get(k)}
    for r in rows:  # the loss plot reads train_loss
        r["train_loss"] = r.get("loss", "")
    loss_curve(rows, out / "loss.png", title=title)
    dashboard(rows, [c for c in columns if c != "loss"] + ["loss", "lr", "grad_norm", "step_time_s"],
              out / "dashboard.png", title=title)
    release_freed_memory()  # what the updates left behind, before the caller's next stage
    return {**stats, "steps_done": done, "seconds": round(time.perf_counter() - started, 2)}
