"""The one training loop (pretraining on line files; SFT reuses its pieces).

AdamW with weight decay on matrices only, linear warmup + cosine decay to
`min_lr_ratio * lr`, gradient clipping and accumulation, bf16 autocast where the
device supports it, opt-in torch.compile, periodic validation, NaN/inf stop,
atomic checkpoints and exact resume (model, optimizer, scheduler, RNG and
data-order state are all saved, and metrics.csv is cut back to the checkpoint).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import RunConfig
from .data.lines import EncodedLines, encode_lines, read_lines, split_lines
from .data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from .errors import SeqlabError
from .metrics import MetricsLog, read_metrics
from .models import SeqModel, build_model
from .plots import loss_curve

COLUMNS = ["step", "train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_per_s", "elapsed_s"]


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeqlabError(f"device '{name}' requested but CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SeqlabError("device 'mps' requested but MPS is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SeqlabError(f"unknown device '{name}' (use cpu, cuda, cuda:N or mps)") from None


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA when supported ('auto'); float32 elsewhere unless asked."""
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def make_optimizer(model: SeqModel, cfg) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2: linear and embedding weights) only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # torch's fused kernel: one op per tensor instead of ~10; on a CPU the default per-tensor
    # loop took 0.64 ms per step for a 210k-parameter transformer, fused 0.16 ms (same
    # numbers to 1e-7). Devices or dtypes it does not cover keep the default.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused or None)


def lr_factor(step: int, cfg) -> float:
    """Multiplier of cfg.lr for update number `step` (0-based): warmup, then cosine."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: SeqModel, data: EncodedLines, pad_id: int, device, batch_size: int = 256,
             amp: torch.dtype | None = None) -> float:
    """Mean loss per target token over the whole split (exact, not sampled)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = torch.argsort(data.lengths)  # similar lengths together: less padding
    for i in range(0, len(data), batch_size):
        x, y = data.batch(order[i: i + batch_size], pad_id)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            _, loss = model(x, y, loss_reduction="sum")
        total += float(loss)
        count += int((y != -1).sum())
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: EncodedLines
    val: EncodedLines
    train_lines: list[str]
    val_lines: list[str]
    block_size: int


def prepare_data(cfg: RunConfig, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Read, split, tokenize and encode the data file named by the config."""
    if not cfg.data:
        raise SeqlabError("no data file given (use --data FILE or [data] path = ... in the config)")
    lines = read_lines(cfg.data)
    opts = cfg.data_opts
    if tokenizer is None:
        if opts.tokenizer == "bpe":
            tokenizer = BPETokenizer.train(lines, opts.bpe_vocab_size, opts.specials)
        else:
            tokenizer = CharTokenizer.train(lines, opts.specials)
    train_lines, val_lines = split_lines(lines, opts.val_fraction, opts.val_max, cfg.train.seed)
    block_size = cfg.model.block_size
    if block_size <= 0:
        longest = max(len(tokenizer.encode(s)) for s in lines)
        block_size = longest + 1
    train = encode_lines(train_lines, tokenizer, block_size, opts.truncate, source=cfg.data)
    val = encode_lines(val_lines or train_lines[:1], tokenizer, block_size, opts.truncate, source=cfg.data)
    return PreparedData(tokenizer, train, val, train_lines, val_lines, block_size)


class Progress:
    """A progress line on stderr (tqdm) with loss, tokens/s and ETA."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True,
                            unit="step", leave=True, mininterval=0.1 if sys.stderr.isatty() else 5.0)

    def update(self, n: int, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(cfg: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          tokenizer: Tokenizer | None = None, init_from: SeqModel | None = None,
          deadline: float | None = None) -> dict:
    """Train (or resume) a model into run directory `out_dir`. Returns final metrics.

    `deadline` (a time.perf_counter() value): stop after the step that passes it, evaluated
    and checkpointed like a last step (e.g. PatternBoost inside its wall-clock budget).

    `tokenizer`: use this one instead of building one from the data (e.g. a fixed
    vocabulary). `init_from`: start from this model's weights instead of a random
    initialisation (same config and vocabulary), e.g. PatternBoost keeping its
    transformer between generations."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SeqlabError(f"{out}: is a file; --out names a run folder")
    tc = cfg.train
    device = resolve_device(tc.device)
    last = ckpt.latest_checkpoint(out)
    if resume:
        if last is None:
            raise SeqlabError(f"{out}: nothing to resume (no checkpoint found)")
        saved_cfg, tokenizer, vocab_size = ckpt.load_run_files(out)
        extended = saved_cfg.train.steps != tc.steps
        saved_cfg.train.steps = tc.steps  # the one setting a resume may change: train longer
        saved_cfg.train.device = tc.device
        cfg, tc = saved_cfg, saved_cfg.train
        data = prepare_data(cfg, tokenizer)
    else:
        if last is not None or (out / "best.safetensors").exists():
            raise SeqlabError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        data = prepare_data(cfg, tokenizer)
        if init_from is None:
            cfg.model.block_size = data.block_size
        elif data.block_size > cfg.model.block_size:
            raise SeqlabError(f"{cfg.data}: lines need block_size {data.block_size}, the initial model has "
                              f"{cfg.model.block_size}")
    tokenizer = data.tokenizer

    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, tokenizer.vocab_size).to(device)
    if init_from is not None and not resume:
        model.load_state_dict(init_from.state_dict())
    optimizer = make_optimizer(model, tc)
    batch_gen = torch.Generator().manual_seed(tc.seed + 1)
    step, best_val, elapsed_before, tokens_seen = 0, float("inf"), 0.0, 0
    if resume:
        extra, state = ckpt.load_checkpoint(last, model)
        optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"])
        batch_gen.set_state(extra["batch_rng"])
        if device.type == "cuda" and "cuda_rng" in extra:
            torch.cuda.set_rng_state(extra["cuda_rng"])
        step, best_val = state["step"], state["best_val"]
        elapsed_before, tokens_seen = state["elapsed_s"], state["tokens_seen"]
        if tc.steps < step:
            raise SeqlabError(f"{out}: the run is already at step {step}, past --steps {tc.steps}; "
                              f"pass a larger --steps to extend it")
        if extended:  # the run's target is now the new one (a later plain --resume keeps it)
            ckpt.save_run_files(out, cfg, tokenizer, vocab_size)
    else:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save_run_files(out, cfg, tokenizer, tokenizer.vocab_size)

    amp = autocast_dtype(tc.dtype, device)
    fwd = torch.compile(model) if tc.compile else model
    log = MetricsLog(out / "metrics.csv", COLUMNS, keep_until_step=step)
    bar = Progress(tc.steps, step, progress)
    pad = tokenizer.pad_id
    n_train = len(data.train)
    train_loss = val_loss = None
    t_start = time.perf_counter()
    t_window, tok_window = t_start, 0
    tokens_per_s = 0
    last_good = str(last) if last else None

    def checkpoint_now():
        extra = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "batch_rng": batch_gen.get_state()}
        if device.type == "cuda":
            extra["cuda_rng"] = torch.cuda.get_rng_state()
        state = {"step": step, "best_val": best_val, "tokens_seen": tokens_seen,
                 "elapsed_s": elapsed_before + time.perf_counter() - t_start}
        return str(ckpt.save_checkpoint(out, step, model, extra, state, tc.keep_checkpoints))

    model.train()
    try:
        while step < tc.steps:
            lr = tc.lr * lr_factor(step, tc)
            for g in optimizer.param_groups:
                g["lr"] = lr
            # Draw the whole (accumulated) batch first so the loss is normalised by
            # its total token count: 8 micro-batches of 1 equal 1 batch of 8.
            idx = torch.randint(n_train, (tc.batch_size * tc.grad_accum,), generator=batch_gen)
            micro = idx.view(tc.grad_accum, tc.batch_size)
            batches = [data.train.batch(m, pad, trim=not tc.compile) for m in micro]
            n_tokens = sum(int((y != -1).sum()) for _, y in batches)
            loss_sum = 0.0
            for x, y in batches:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    _, loss = fwd(x, y, loss_reduction="sum")
                (loss / n_tokens).backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
            train_loss = float(loss_sum) / n_tokens
            if not (math.isfinite(train_loss) and math.isfinite(float(grad_norm))):
                where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                raise SeqlabError(f"non-finite loss or gradient at step {step + 1} (loss={train_loss}); "
                                  f"stopped, {where}; lower train.lr and --resume")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += n_tokens
            tok_window += n_tokens
            # the last step: the run's end, or the caller's deadline (then logged and saved alike)
            final = step == tc.steps or (deadline is not None and time.perf_counter() >= deadline)
            row = {"step": step}
            if step % tc.log_interval == 0 or final:
                now = time.perf_counter()
                tokens_per_s = round(tok_window / max(now - t_window, 1e-9))
                row.update(train_loss=round(train_loss, 6), lr=lr, grad_norm=round(float(grad_norm), 4),
                           tokens_per_s=tokens_per_s,
                           elapsed_s=round(elapsed_before + now - t_start, 3))
                t_window, tok_window = now, 0
            if step % tc.eval_interval == 0 or final:
                val_loss = evaluate(model, data.val, pad, device, amp=amp)
                row.update(val_loss=round(val_loss, 6), val_ppl=round(math.exp(min(val_loss, 50)), 4))
                if val_loss < best_val:
                    best_val = val_loss
                    ckpt.save_best(out, model, {"step": step, "val_loss": val_loss})
            if len(row) > 1:
                log.log(row)
            bar.update(1, loss=f"{train_loss:.4f}",
                       val=f"{val_loss:.4f}" if val_loss is not None else "-",
                       tok_s=tokens_per_s)
            if step % tc.checkpoint_interval == 0 or final:
                last_good = checkpoint_now()
            if final:
                break
    finally:
        bar.close()
        log.close()
    if step == 0 or val_loss is None:
        val_loss = evaluate(model, data.val, pad, device, amp=amp)
    rows = read_metrics(out / "metrics.csv")
    if train_loss is None:  # no step ran now (a finished run resumed): the last one logged
        train_loss = next((float(r["train_loss"]) for r in reversed(rows) if r.get("train_loss")), None)
    loss_curve(rows, out / "loss.png", title=f"{cfg.model.type} on {Path(cfg.data).name}")
    seconds = rows[-1]["elapsed_s"] if rows and rows[-1].get("elapsed_s") else elapsed_before
    return {"step": step, "train_loss": train_loss, "val_loss": val_loss, "best_val_loss": best_val,
            "seconds": float(seconds or 0.0), "params": model.num_params()}
