"""The one training loop: next-token prediction on line files, and classification or
regression on JSONL examples (supervised.py holds their data, loss and metrics).

Gradient accumulation over the global batch (normalised by its token count), data-parallel
slices under torchrun, bf16 autocast where the device supports it, opt-in torch.compile,
periodic validation and the best weights, metrics cut back to the checkpoint on resume.
The optimizer, schedule, update step, NaN/inf stop and checkpoints are engine.py's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .engine import Engine, OptimSettings, Progress, autocast_dtype, resolve_device, set_threads
from .config import RunConfig
from .data.lines import EncodedLines, encode_lines, read_lines, split_lines
from .data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from .errors import SeqlabError
from .metrics import MetricsLog, read_metrics
from .models import SeqModel, build_for_run
from .plots import loss_curve

COLUMNS = ["step", "train_loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_per_s", "elapsed_s"]
EVAL_COLUMNS = ["success_rate", "wellformed_rate", "novelty"]  # with train.eval_task only
# with model.moe_experts only: the load-balancing loss over the training steps since the last
# evaluation, and each layer's share of tokens per expert on the validation split
MOE_COLUMNS = ["moe_aux", "expert_usage"]
# group_by_length: a batch is drawn from this many batches' worth of similar-length examples
LENGTH_WINDOW_BATCHES = 32


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


def is_supervised(cfg: RunConfig) -> bool:
    """A classify / regress run: named by [task] type, or a JSONL data file with type auto."""
    from .data.examples import is_jsonl

    return cfg.task.type in ("classify", "regress", "seq2seq") or (cfg.task.type == "auto" and is_jsonl(cfg.data))


def prepare_data(cfg: RunConfig, tokenizer: Tokenizer | None = None):
    """Read, split, tokenize and encode the data file named by the config: PreparedData for
    language modelling, supervised.SupervisedData for classify / regress."""
    if not cfg.data:
        raise SeqlabError("no data file given (use --data FILE or [data] path = ... in the config)")
    if is_supervised(cfg):
        from . import supervised

        return supervised.prepare(cfg, tokenizer)
    if cfg.task.type == "mlm":  # BERT: a bidirectional encoder, and a <mask> token to predict at
        from .mlm import MASK

        cfg.model.bidirectional = True
        if MASK not in cfg.data_opts.specials:
            cfg.data_opts.specials = [*cfg.data_opts.specials, MASK]
    else:
        cfg.task.type = "lm"
    if cfg.train.group_by_length and cfg.task.type in ("lm", "mlm"):  # lm packs its rows instead
        raise SeqlabError(f"config key 'train.group_by_length': applies to classify, regress and seq2seq "
                          f"(JSONL data), not to {cfg.task.type}")
    if cfg.model.bidirectional and cfg.task.type == "lm":
        raise SeqlabError("config key 'model.bidirectional': a language model cannot read ahead; "
                          "bidirectional models are for classify and regress (JSONL data)")
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
        block_size = longest + (2 if cfg.task.type == "mlm" else 1)  # mlm reads <bos> ids <eos> whole
    train = encode_lines(train_lines, tokenizer, block_size, opts.truncate, source=cfg.data)
    val = encode_lines(val_lines or train_lines[:1], tokenizer, block_size, opts.truncate, source=cfg.data)
    return PreparedData(tokenizer, train, val, train_lines, val_lines, block_size)


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
    task = cfg.task.type
    lm = task == "lm"
    only_transformer = task == "mlm"
    if not lm and cfg.model.type not in (("transformer",) if only_transformer else ("transformer", "rnn", "lstm", "gru")):
        raise SeqlabError(f"config key 'model.type': {task} needs a "
                          f"{'transformer' if only_transformer else 'transformer, rnn, lstm or gru'} backbone, "
                          f"not {cfg.model.type}")
    if task == "seq2seq" and cfg.model.attention_window:
        raise SeqlabError("config key 'model.attention_window': a seq2seq decoder keeps its whole context "
                          "(sliding windows are for language models and encoders)")
    verifier = None
    if tc.eval_task and not lm:
        raise SeqlabError(f"config key 'train.eval_task': sampling-based evaluation is for language models; "
                          f"a {task} run reports its metrics at every evaluation")
    if tc.eval_task:  # a task the verifier cannot build fails now, before anything is written
        from .data.verify import get_verifier

        if tc.eval_samples <= 0:
            raise SeqlabError(f"config key 'train.eval_samples': must be positive, got {tc.eval_samples}")
        verifier = get_verifier(tc.eval_task, tc.eval_equal or None, tc.eval_length or None)

    set_threads(tc.threads)
    torch.manual_seed(tc.seed)
    model = build_for_run(cfg, tokenizer.vocab_size).to(device)
    if init_from is not None and not resume:  # a classifier / regressor starts from a pretrained backbone
        (model.backbone if task in ("classify", "regress") else model).load_state_dict(init_from.state_dict())
    batch_gen = torch.Generator().manual_seed(tc.seed + 1)
    engine = Engine(model, OptimSettings.of(tc), device=device, run_dir=out, generators={"batch": batch_gen},
                    keep=tc.keep_checkpoints, hint="lower train.lr")
    ranks = engine.ranks
    step, best_val, elapsed_before, tokens_seen = 0, float("inf"), 0.0, 0
    if resume:
        step, state = engine.restore()
        best_val, elapsed_before, tokens_seen = state["best_val"], state["elapsed_s"], state["tokens_seen"]
        if tc.steps < step:
            raise SeqlabError(f"{out}: the run is already at step {step}, past --steps {tc.steps}; "
                              f"pass a larger --steps to extend it")
        if extended and ranks.main:  # the run's target is now the new one (a later plain --resume keeps it)
            ckpt.save_run_files(out, cfg, tokenizer, vocab_size)
    elif ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.save_run_files(out, cfg, tokenizer, tokenizer.vocab_size)
    global_batch = tc.batch_size * tc.grad_accum
    mine = ranks.shard(global_batch, "train.batch_size x train.grad_accum")

    from .supervised import METRIC_COLUMNS

    task_columns = METRIC_COLUMNS.get(task, [])
    amp = autocast_dtype(tc.dtype, device)
    fwd = torch.compile(model) if tc.compile else model
    log = MetricsLog(out / "metrics.csv" if ranks.main else None, COLUMNS + (EVAL_COLUMNS if verifier else [])
                     + (MOE_COLUMNS if getattr(model, "moe_layers", None) else []) + task_columns,
                     keep_until_step=step)
    known_lines = set(data.train_lines) | set(data.val_lines) if verifier else set()
    success = None

    def success_rates() -> dict:
        """The verifier's rates on eval_samples strings: the numbers `seqlab eval RUN --task T
        --n N --seed S` gives for this checkpoint (same sampler, seed and novelty set). Its
        own generator: the training's random stream is untouched (exact resume holds)."""
        from .data.verify import judge
        from .generate_text import sample_strings

        r = judge(sample_strings(model, tokenizer, tc.eval_samples, seed=tc.seed, device=device), verifier,
                  known_lines, show_failures=0)
        return {k: None if r[k] is None else round(r[k], 6) for k in EVAL_COLUMNS}

    bar = Progress(tc.steps, step, progress and ranks.main)
    by_length = None  # the training examples in order of length, for group_by_length
    if tc.group_by_length:  # (prepare_data refused it for lm and mlm)
        lengths = data.train.src_lengths + data.train.tgt_lengths if task == "seq2seq" else data.train.lengths
        by_length = torch.argsort(lengths, stable=True)
    pad = tokenizer.pad_id
    n_train = len(data.train)
    train_loss = val_loss = None
    t_start = time.perf_counter()
    t_window, tok_window = t_start, 0
    tokens_per_s = 0

    def loop_state():
        return {"best_val": best_val, "tokens_seen": tokens_seen,
                "elapsed_s": elapsed_before + time.perf_counter() - t_start}

    def batch_loss():
        """This rank's share of the global batch's loss: its rows' token losses over the
        global batch's token count (so 8 micro-batches of 1 equal 1 batch of 8, and the
        shares of N ranks add up to one process's loss)."""
        nonlocal n_tokens
        # every rank draws the same global batch (same generator) and takes its slice; the
        # global token count needs no communication
        if by_length is not None:
            from .supervised import similar_length_batch

            idx = similar_length_batch(by_length, global_batch, LENGTH_WINDOW_BATCHES * global_batch, batch_gen)
        else:
            idx = torch.randint(n_train, (global_batch,), generator=batch_gen)
        if task == "mlm":
            return mlm_batch_loss(idx)
        if not lm:  # classify / regress: one target per example
            return supervised_batch_loss(idx)
        n_tokens = data.train.target_count(idx)
        loss_sum = 0.0
        for m in idx[mine].split(tc.batch_size):
            packed = {}
            if pack:
                width = model.packed_width(int(data.train.lengths[m].max()) + 1)
                x, y, positions, starts = data.train.packed_batch(m, pad, width)
                packed = {"positions": positions.to(device, non_blocking=True),
                          "starts": starts.to(device, non_blocking=True)}
            else:
                x, y = data.train.batch(m, pad, trim=not tc.compile)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                _, loss = fwd(x, y, loss_reduction="sum", **packed)
            (loss / n_tokens).backward()
            loss_sum = loss_sum + loss.detach().float()  # stays on the device: no sync per micro-batch
        return torch.as_tensor(loss_sum) / n_tokens

    def supervised_batch_loss(idx):
        """batch_loss for classify / regress: per-example losses over the global batch's size."""
        from .supervised import loss_sum as example_loss_sum

        nonlocal n_tokens
        # examples (logged as tokens_per_s: examples per second here); seq2seq: target tokens
        n_tokens = int(data.train.tgt_lengths[idx].sum()) - len(idx) if task == "seq2seq" else len(idx)
        total = 0.0
        for m in idx[mine].split(tc.batch_size):
            batch = tuple(t.to(device, non_blocking=True) for t in data.train.batch(m))
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = example_loss_sum(fwd, batch, cfg.task)
            (loss / n_tokens).backward()
            total = total + loss.detach().float()
        return torch.as_tensor(total) / n_tokens

    def mlm_batch_loss(idx):
        """batch_loss for mlm: the global batch masked at once (its count of chosen tokens is
        the normaliser), with the batch generator (saved in checkpoints: exact resume)."""
        from .mlm import MASK, mask_tokens, mlm_loss_sum, ordinary_range

        nonlocal n_tokens
        lengths = data.train.lengths[idx] + 2
        x = data.train.tokens[idx, : int(lengths.max())]
        inputs, targets = mask_tokens(x, lengths, tokenizer.encode(MASK)[0], ordinary_range(tokenizer), batch_gen)
        n_tokens = max(int((targets != -1).sum()), 1)
        total = 0.0
        for m in torch.arange(len(idx))[mine].split(tc.batch_size):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss, _ = mlm_loss_sum(model, inputs[m].to(device), lengths[m].to(device), targets[m].to(device))
            (loss / n_tokens).backward()
            total = total + loss.detach().float()
        return torch.as_tensor(total) / n_tokens

    def validate() -> tuple[float, dict]:
        """(validation loss, the task's metrics for metrics.csv)."""
        if lm:
            return evaluate(model, data.val, pad, device, amp=amp), {}
        if task == "mlm":
            from .mlm import evaluate as evaluate_mlm

            res = evaluate_mlm(model, data.val, tokenizer, device, seed=tc.seed)
            return res["val_loss"], {"mlm_accuracy": round(res["mlm_accuracy"], 6)}
        from .supervised import evaluate as evaluate_task

        res = evaluate_task(model, data.val, cfg.task, device, tokenizer)
        last_eval[step] = res  # the run's end reports (and plots) this, not a second evaluation
        return res["val_loss"], {k: None if res[k] is None else round(res[k], 6) for k in task_columns}

    n_tokens = 0
    last_eval: dict = {}  # step -> a classify/regress/seq2seq evaluation's full result
    # packed rows (same loss and gradients, no work on padding); torch.compile keeps fixed shapes
    pack = tc.pack and getattr(model, "supports_packing", False) and not tc.compile
    model.train()
    try:
        while step < tc.steps:
            upd = engine.update(step, batch_loss)
            train_loss, lr = upd.loss, upd.lr
            step += 1
            tokens_seen += n_tokens
            tok_window += n_tokens
            # the last step: the run's end, or the caller's deadline (then logged and saved alike)
            final = step == tc.steps or (deadline is not None and time.perf_counter() >= deadline)
            row = {"step": step}
            if step % tc.log_interval == 0 or final:
                now = time.perf_counter()
                tokens_per_s = round(tok_window / max(now - t_window, 1e-9))
                row.update(train_loss=round(train_loss, 6), lr=lr, grad_norm=round(upd.grad_norm, 4),
                           tokens_per_s=tokens_per_s,
                           elapsed_s=round(elapsed_before + now - t_start, 3))
                t_window, tok_window = now, 0
            if ranks.main and (step % tc.eval_interval == 0 or final):
                moe_train = model.moe_stats() if getattr(model, "moe_layers", None) else None
                val_loss, task_metrics = validate()
                row.update(task_metrics)
                if moe_train is not None:
                    row.update(moe_aux=moe_train.get("moe_aux"), expert_usage=model.moe_stats()["expert_usage"])
                row.update(val_loss=round(val_loss, 6), val_ppl=round(math.exp(min(val_loss, 50)), 4))
                if verifier is not None:
                    row.update(success_rates())
                    success = row["success_rate"]
                if val_loss < best_val:
                    best_val = val_loss
                    ckpt.save_best(out, model, {"step": step, "val_loss": val_loss})
            if len(row) > 1:
                log.log(row)
            bar.update(1, loss=f"{train_loss:.4f}",
                       val=f"{val_loss:.4f}" if val_loss is not None else "-",
                       tok_s=tokens_per_s, **({"success": f"{success:.1%}"} if success is not None else {}))
            if step % tc.checkpoint_interval == 0 or final:
                engine.save(step, loop_state(), whole_model=True)
            if final:
                break
    finally:
        bar.close()
        log.close()
    if not ranks.main:
        return {"step": step, "train_loss": train_loss, "val_loss": None, "best_val_loss": None,
                "seconds": time.perf_counter() - t_start, "params": model.num_params()}
    if step == 0 or val_loss is None:
        val_loss, _ = validate()
    final = {}
    if task == "mlm":
        final = validate()[1]
    elif not lm:  # the last weights' metrics on the validation split, and their confusion matrix
        from .supervised import evaluate as evaluate_task

        res = last_eval.get(step) or evaluate_task(model, data.val, cfg.task, device, tokenizer)
        final = {k: res[k] for k in task_columns}
        if task == "classify":
            from .plots import confusion_matrix

            confusion_matrix(res["confusion"], cfg.task.labels, out / "confusion.png",
                             title=f"{cfg.model.type} on {Path(cfg.data).name}: validation split")
    rows = read_metrics(out / "metrics.csv")
    if train_loss is None:  # no step ran now (a finished run resumed): the last one logged
        train_loss = next((float(r["train_loss"]) for r in reversed(rows) if r.get("train_loss")), None)
    loss_curve(rows, out / "loss.png", title=f"{cfg.model.type} on {Path(cfg.data).name}")
    seconds = rows[-1]["elapsed_s"] if rows and rows[-1].get("elapsed_s") else elapsed_before
    return {"step": step, "train_loss": train_loss, "val_loss": val_loss, "best_val_loss": best_val,
            "seconds": float(seconds or 0.0), "params": model.num_params(), **final}
