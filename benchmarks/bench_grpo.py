"""GRPO step benchmark: seqlab's `run_grpo` against TRL's `GRPOTrainer`, in one run.

    python benchmarks/bench_grpo.py [--out grpo.json] [--rounds 5] [--threads 2 1] [--trl-defaults]
                                    [--max-other 0.15] [--wait-quiet S] [--profile | --profile-only]

One GRPO step = sample G completions for each of P prompts, score them with a
reward function, and make one policy update (forward + backward + AdamW step).
Two sizes: P x G = 1 x 8 and 8 x 8, prompts of 16 characters (17 tokens with
<bos>) and completions of up to 64 tokens, each stopping at its end-of-sequence token
on both sides (a real eos id: the untrained models draw it about once in 44 tokens);
ratios are given per step and per completion token. Every run is a process of its own.

* seqlab: a freshly initialised Transformer (4 layers, 4 heads, 64 dims, block
  128, character tokenizer, dropout 0, no biases) saved as a run directory, then
  `seqlab.post.grpo.run_grpo(cfg)` with steps = warmup + N; step times are the
  `step_time_s` column of the run's metrics.csv (the product's own timer around
  one update); completion tokens per step from its completion_len column.
* TRL: `GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=4, n_embd=64,
  n_positions=128, dropouts 0, untied lm_head))` on a character tokenizer with
  the same ids (`PreTrainedTokenizerFast` over a `tokenizers` model that
  prepends <bos>), `GRPOTrainer(...).train()` with max_steps = warmup + N;
  step times come from a TrainerCallback (on_step_begin -> on_step_end).
  max_completion_length=64; completion tokens counted on generate's output (each
  row up to and including its first eos).

Both sides: the same reward (share of the letter "a" in the completion, plain
Python), lr 1e-4 constant, AdamW betas (0.9, 0.99), grad clip 1.0, beta (KL) 0,
num_iterations 1, loss_type "dapo", temperature 1, no top-k/top-p, fp32,
`torch.set_num_threads(T)` for T in --threads. --trl-defaults adds a third
contender: TRL with GRPOConfig's own bf16 (autocast on CPU) and gradient
checkpointing, both on by default in TRL 1.x. Contenders alternate (who goes
first rotates from cell to cell) and each (size, threads) cell gets --rounds
fresh runs of --warmup + --steps steps; the first --warmup steps of every run
are dropped. Ratios are TRL's time over seqlab's (medians over all kept steps).

Phases inside each step are timed with light wrappers (a few µs per step):
`generate` (seqlab.sampling.generate / the HF model's generate), the reward
function, the training forward (model forward calls outside generate),
`Tensor.backward`, and the optimizer step (global optimizer hooks).

The script reports how much of the machine other processes used during each
run: with 2 threads on a 2-core box, another busy process slows these tiny ops
down by 10-100x (benchmarks/results.md, "Noise"). --max-other F drops and redoes
a run during which they used more than F of the machine (plus the cores the run
does not need: one busy core of two leaves a 1-thread run alone); the check runs
during decoding, so a spoiled run stops within about a second.

    python benchmarks/bench_grpo.py --trl-defaults --max-other 0.15 --retries 50 \
        --wait-quiet 300 --out grpo.json       # as run for benchmarks/results.md
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
import json
import logging
import os
import platform
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from machine_load import CpuMeter, wait_for_quiet

HERE = Path(__file__).resolve().parent
CHARS = string.ascii_lowercase + string.digits + " ."  # the character vocabulary (+ <pad> <bos> <eos>)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
PROMPT_CHARS = 16
NEW_TOKENS = 64
N_PROMPTS = 64  # distinct prompts in the data set
LR = 1e-4
SIZES = {"1x8": (1, 8), "8x8": (8, 8)}  # prompts per step x completions per prompt
TARGET = "a"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- phase timers


class Phases:
    """Wall time of the phases of each GRPO step, for both contenders.

    A step starts when `generate` starts (num_iterations 1: one rollout per
    update, and it comes first). `forward` counts model forward calls made
    outside `generate` (HF's generate calls forward once per token).
    """

    def __init__(self):
        self.steps: list[dict] = []
        self.gen_starts: list[float] = []
        self.in_generate = False
        self.active = False
        self.profiler = None  # a torch.profiler.profile to step at every GRPO step (--profile)
        self.guard: tuple | None = None  # (CpuMeter, limit): abort the run once others use more than limit
        self.last_check = 0.0

    def reset(self):
        self.steps, self.gen_starts, self.in_generate = [], [], False

    def add(self, phase: str, dt: float):
        if self.active and self.steps:
            self.steps[-1][phase] = self.steps[-1].get(phase, 0.0) + dt

    def check_busy(self):
        """Raise MachineBusy when other processes used too much CPU since the run began (--max-other).

        Called at every decode step and step start, but reads /proc/stat at most every 0.5 s: on a busy
        2-core machine one 2-thread step can take 30 s, and there is no point finishing it."""
        if self.guard is None:
            return
        t = time.perf_counter()
        if t - self.last_check < 0.5:
            return
        self.last_check = t
        meter, limit = self.guard
        share = meter.others_share()
        if share is not None and share > limit:
            raise MachineBusy(share)

    def new_step(self, t: float):
        self.check_busy()
        if self.active:
            self.steps.append({})
            self.gen_starts.append(t)
        if self.profiler is not None:
            self.profiler.step()


class MachineBusy(Exception):
    """Other processes used more of the machine than --max-other allows during a run."""


PHASES = Phases()
PHASE_NAMES = ("generate", "reward", "forward", "backward", "optimizer")


def _labelled(phase: str):
    """A torch.profiler range named grpo::PHASE while --profile records, else nothing."""
    if PHASES.profiler is None:
        return contextlib.nullcontext()
    return torch.profiler.record_function(f"grpo::{phase}")


def timed_generate(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        PHASES.new_step(t0)
        PHASES.in_generate = True
        try:
            with _labelled("generate"):
                return fn(*a, **k)
        finally:
            PHASES.in_generate = False
            PHASES.add("generate", time.perf_counter() - t0)
    return wrapper


def timed_forward(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        if PHASES.in_generate or not PHASES.active:
            PHASES.check_busy()  # HF generate: one forward per token
            return fn(*a, **k)
        t0 = time.perf_counter()
        try:
            with _labelled("forward"):
                return fn(*a, **k)
        finally:
            PHASES.add("forward", time.perf_counter() - t0)
    return wrapper


_ORIG_BACKWARD = torch.Tensor.backward
_OPT_T0: list[float] = []


def _timed_backward(self, *a, **k):
    t0 = time.perf_counter()
    try:
        with _labelled("backward"):
            return _ORIG_BACKWARD(self, *a, **k)
    finally:
        PHASES.add("backward", time.perf_counter() - t0)


def _opt_pre(opt, args, kwargs):
    _OPT_T0.append(time.perf_counter())


def _opt_post(opt, args, kwargs):
    if _OPT_T0:
        PHASES.add("optimizer", time.perf_counter() - _OPT_T0.pop())


def install_timers() -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    torch.Tensor.backward = _timed_backward
    register_optimizer_step_pre_hook(_opt_pre)
    register_optimizer_step_post_hook(_opt_post)


# --------------------------------------------------------------------------- the reward (both sides)


def target_fraction(prompts, completions, **kwargs):
    """Share of the letter "a" in each completion: cheap plain Python, TRL's calling convention."""
    t0 = time.perf_counter()
    out = [c.count(TARGET) / max(len(c), 1) for c in completions]
    PHASES.add("reward", time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- machine


def machine_info() -> dict:
    import transformers
    import trl

    import seqlab
    from seqlab.models import native

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
            "logical_cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__,
            "seqlab": getattr(seqlab, "__version__", "?"),
            "seqlab_decode_step": "native" if native.load() is not None else "python"}
    git = ["git", "--no-optional-locks", "-C", str(HERE.parent)]  # read-only: no index refresh
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "src"], capture_output=True, text=True,
                               timeout=10)
        if head.returncode == 0:
            info["seqlab_git"] = head.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else "")
    return info


# --------------------------------------------------------------------------- seqlab side


def make_prompts(seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = string.ascii_lowercase + " "
    return ["".join(rng.choice(letters) for _ in range(PROMPT_CHARS)) for _ in range(N_PROMPTS)]


def _busy_checked(fn):
    """Wrap seqlab.sampling.generate: check the machine's load first (the real eos id passes
    through: a completion stops at its eos, as TRL's do)."""
    @functools.wraps(fn)
    def wrapper(*a, **k):
        PHASES.check_busy()
        return fn(*a, **k)
    return wrapper


def setup_seqlab(work: Path, prompts: list[str], seed: int) -> tuple[Path, Path, int]:
    """A run directory with a freshly initialised transformer, and the prompts as JSONL."""
    from seqlab.checkpoint import save_best, save_run_files
    from seqlab.config import run_config_from_dict
    from seqlab.data.tokenizer import CharTokenizer
    from seqlab.models import build_model

    tok = CharTokenizer(list(CHARS))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (PAD_ID, BOS_ID, EOS_ID)
    cfg = run_config_from_dict({"model": {"type": "transformer", "n_layer": 4, "n_head": 4, "n_embd": 64,
                                          "block_size": 128, "dropout": 0.0}})
    torch.manual_seed(seed)
    model = build_model(cfg.model, tok.vocab_size)
    base = work / "seqlab-base"
    base.mkdir(parents=True)
    save_run_files(base, cfg, tok, tok.vocab_size)
    save_best(base, model, {"step": 0, "note": "freshly initialised (bench_grpo.py)"})
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    seqlab_wrappers()
    return base, data, sum(p.numel() for p in model.parameters())


def seqlab_wrappers() -> None:
    """Benchmark-side wrappers (src/ is untouched): the load check and the phase timers."""
    import seqlab.sampling
    from seqlab.models.base import SeqModel

    if getattr(seqlab.sampling.generate, "_bench", False):
        return
    seqlab.sampling.generate = timed_generate(_busy_checked(seqlab.sampling.generate))  # run_grpo imports it at call time
    seqlab.sampling.generate._bench = True
    SeqModel.forward = timed_forward(SeqModel.forward)
    from seqlab.models.transformer import Transformer

    # GRPO's training forward: each prompt once per group (it does not go through forward)
    Transformer.continuation_logits = timed_forward(Transformer.continuation_logits)
    # the reward is named "bench_grpo:target_fraction" in the config: make this module importable by that name
    sys.modules.setdefault("bench_grpo", sys.modules[__name__])


def run_seqlab(base: Path, data: Path, out: Path, size: str, threads: int, steps: int, seed: int) -> dict:
    from seqlab.post.config import load_post_config
    from seqlab.post.grpo import run_grpo

    P, G = SIZES[size]
    cfg = load_post_config(None, {
        "policy": str(base), "data": str(data), "out": str(out), "steps": steps, "lr": LR,
        "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0, "weight_decay": 0.0, "warmup_steps": 0,
        "min_lr_ratio": 1.0, "group_size": G, "prompts_per_step": P, "max_new_tokens": NEW_TOKENS,
        "temperature": 1.0, "kl_beta": 0.0, "loss_type": "dapo", "num_iterations": 1,
        "rewards": ["bench_grpo:target_fraction"], "samples_every": 0, "threads": threads, "seed": seed,
        "log_interval": 1})
    run_grpo(cfg, progress=False)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == steps, f"metrics.csv has {len(rows)} rows, expected {steps}"
    assert all(float(r["completion_len_max"]) <= NEW_TOKENS for r in rows)
    # completion tokens per step (each row up to and including its eos), for the per-token ratio
    return {"step_s": [float(r["step_time_s"]) for r in rows],
            "completion_tokens": [float(r["completion_len"]) * P * G for r in rows]}


# --------------------------------------------------------------------------- TRL side


def hf_tokenizer():
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    itos = ["<pad>", "<bos>", "<eos>", *CHARS]
    vocab = {s: i for i, s in enumerate(itos)}
    # BPE with no merges and no pre-tokenizer: one token per character, spaces included
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS_ID)])
    t.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                  padding_side="left", clean_up_tokenization_spaces=False)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert len(tok) == len(itos)
    sample = "ab c." * 3 + "z"
    ids = tok(sample)["input_ids"]
    assert ids == [BOS_ID] + [vocab[c] for c in sample], ids
    assert tok.decode(ids, skip_special_tokens=True) == sample
    return tok


def hf_model(vocab: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_layer=4, n_head=4, n_embd=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     tie_word_embeddings=False,  # seqlab's lm_head is untied too
                     bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return GPT2LMHeadModel(cfg)


def setup_trl() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="trl")
    warnings.filterwarnings("ignore", module="transformers")


def run_trl(prompts: list[str], tok, out: Path, size: str, threads: int, steps: int, seed: int,
            trl_defaults: bool = False) -> dict:
    """One GRPOTrainer.train() of `steps` steps. trl_defaults: keep GRPOConfig's own bf16 (True: CPU
    autocast) and gradient_checkpointing (True) instead of turning them off."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    P, G = SIZES[size]
    model = hf_model(len(tok), seed)
    checks = {"calls": 0, "lengths": set(), "tokens": [], "threads": set()}
    orig_generate = model.generate

    @timed_generate
    def generate(*a, **k):
        out_ids = orig_generate(*a, **k)
        prompt_len = k["input_ids"].size(1)
        completion = out_ids[:, prompt_len:]
        checks["calls"] += 1
        checks["lengths"].add((k["input_ids"].size(0), prompt_len))
        is_eos = completion == EOS_ID
        ended = is_eos.cumsum(1) - is_eos.long() > 0  # after a row's first eos: padding
        checks["tokens"].append(float((~ended).sum()))
        checks["threads"].add(torch.get_num_threads())
        return out_ids

    model.generate = generate  # unwrap_model_for_generation hands back this same object on one CPU process

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_train_begin(self, args, state, control, **kw):
            torch.set_num_threads(threads)  # in case accelerate changed it

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    args = GRPOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=P * G, num_generations=G,
        generation_batch_size=P * G, gradient_accumulation_steps=1, max_completion_length=NEW_TOKENS,
        temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group",
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.99,
        weight_decay=0.0, max_grad_norm=1.0,
        use_cpu=True, **({} if trl_defaults else {"bf16": False, "fp16": False, "gradient_checkpointing": False}),
        report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0, seed=seed,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=target_fraction, args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok,
                          callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics dict
    # TRL replaces the instance's forward with its fused log-prob head (trl.trainer.utils.add_fused_lm_head);
    # the training forward goes through that one, so that is the one to time
    assert "forward" in vars(model), "TRL no longer patches model.forward: time the training forward elsewhere"
    model.forward = timed_forward(model.forward)
    torch.set_num_threads(threads)
    trainer.train()
    assert len(timer.times) == steps, (len(timer.times), steps)
    assert checks["calls"] == steps, checks
    assert checks["lengths"] == {(P * G, PROMPT_CHARS + 1)}, checks["lengths"]
    assert checks["threads"] == {threads}, checks["threads"]
    return {"step_s": timer.times, "completion_tokens": checks["tokens"],
            "optim": getattr(args.optim, "value", args.optim),
            "attn_implementation": model.config._attn_implementation, "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing}


# --------------------------------------------------------------------------- driver


def busy_limit(max_other: float | None, threads: int) -> float | None:
    """The others' share above which a run with `threads` threads is spoiled: max_other, plus the
    cores the run does not need (one busy core out of two leaves a 1-thread run alone)."""
    if max_other is None:
        return None
    ncpu = os.cpu_count() or 1
    return max_other + max(0, ncpu - threads) / ncpu


def one_run(name: str, fn, warmup: int, limit: float | None = None) -> dict | None:
    """Run `fn` with the phase timers on; None when the machine got busier than `limit`."""
    PHASES.reset()
    PHASES.active = True
    meter = CpuMeter(min_wall=0.5)
    PHASES.guard = None if limit is None else (meter, limit)
    PHASES.last_check = time.perf_counter()
    t0 = time.perf_counter()
    try:
        res = fn()
    except MachineBusy as e:
        log(f"  {name}: other processes used {e.args[0]:.0%} of the machine (limit {limit:.0%}); run dropped")
        return None
    finally:
        PHASES.active, PHASES.guard = False, None
    wall = time.perf_counter() - t0
    share = meter.others_share()
    if limit is not None and share is not None and share > limit:
        log(f"  {name}: other processes used {share:.0%} of the machine (limit {limit:.0%}); run dropped")
        return None
    steps = res["step_s"]
    phases = PHASES.steps
    assert len(phases) == len(steps), f"{name}: {len(phases)} generate calls for {len(steps)} steps"
    # wall time from one step's generate to the next one's: the step plus any loop overhead around it
    gaps = [b - a for a, b in zip(PHASES.gen_starts, PHASES.gen_starts[1:])]
    keep = slice(warmup, None)
    return {"step_s": steps[keep], "phases": phases[keep], "gen_to_gen_s": gaps[warmup:],
            "completion_tokens": res["completion_tokens"][keep], "others_cpu_share": share, "run_wall_s": wall,
            **{k: v for k, v in res.items() if k not in ("step_s", "completion_tokens")}}


def summarise(runs: list[dict]) -> dict:
    steps = [s for r in runs for s in r["step_s"]]
    phases = [p for r in runs for p in r["phases"]]
    gaps = [g for r in runs for g in r["gen_to_gen_s"]]
    tokens = [t for r in runs for t in r["completion_tokens"]]
    out = {"median_s": statistics.median(steps), "best_s": min(steps), "max_s": max(steps), "n_steps": len(steps),
           "completion_tokens_median": statistics.median(tokens),
           "median_ms_per_completion_token": statistics.median(1000 * s / t for s, t in zip(steps, tokens)),
           "run_medians_s": [statistics.median(r["step_s"]) for r in runs],
           "gen_to_gen_median_s": statistics.median(gaps) if gaps else None,
           "others_cpu_share": [r["others_cpu_share"] for r in runs]}
    shares = {}
    for ph in PHASE_NAMES:
        vals = [p.get(ph, 0.0) for p in phases]
        out[f"{ph}_median_s"] = statistics.median(vals)
        shares[ph] = statistics.median(p.get(ph, 0.0) / s for p, s in zip(phases, steps))
    shares["other"] = statistics.median(
        1 - sum(p.get(ph, 0.0) for ph in PHASE_NAMES) / s for p, s in zip(phases, steps))
    out["share_of_step"] = shares
    return out


def profile_seqlab(base: Path, data: Path, work: Path, size: str, threads: int, seed: int, warmup: int,
                   active: int) -> None:
    """torch.profiler over `active` steps of a seqlab run (after `warmup`): the phase split and the top ops."""
    from torch.profiler import ProfilerActivity, profile, schedule

    torch.set_num_threads(threads)
    PHASES.reset()
    PHASES.active = True
    # the profiler is stepped when each GRPO step starts: its step 0 is the run's setup, 1..warmup+1 are
    # waited out / warm the profiler up, the next `active` are recorded; one more step closes the window
    sched = schedule(wait=warmup + 1, warmup=1, active=active, repeat=1)
    try:
        with profile(activities=[ProfilerActivity.CPU], schedule=sched, record_shapes=True) as prof:
            PHASES.profiler = prof
            run_seqlab(base, data, work / f"profile-{size}", size, threads, warmup + active + 2, seed)
    finally:
        PHASES.profiler, PHASES.active = None, False
    steps = PHASES.steps[warmup + 1: warmup + 1 + active]
    print(f"\n### seqlab {size}, {threads} thread(s): torch.profiler over {active} steps\n")
    print("phase medians (ms per step, under the profiler): " + ", ".join(
        f"{ph} {statistics.median(p.get(ph, 0.0) for p in steps) * 1000:.1f}" for ph in PHASE_NAMES))
    # self CPU time of the ops inside each phase's range; what is in no range is the step's glue
    by_phase: dict[str, dict[str, float]] = {}
    total = {}
    for ev in prof.events():
        if ev.name.startswith("ProfilerStep"):
            total["step"] = total.get("step", 0.0) + ev.cpu_time_total
        if not (ev.name.startswith("grpo::") or ev.name.startswith("Optimizer.")):
            continue
        phase = ev.name.removeprefix("grpo::").split("#")[0]
        total[phase] = total.get(phase, 0.0) + ev.cpu_time_total
        acc = by_phase.setdefault(phase, {})
        stack = list(ev.cpu_children)
        while stack:
            c = stack.pop()
            acc[c.name] = acc.get(c.name, 0.0) + c.self_cpu_time_total
            stack.extend(c.cpu_children)
    print(f"\nprofiled step: {total.get('step', 0.0) / active / 1000:.1f} ms (per step, self CPU of ops by phase):")
    for phase, acc in by_phase.items():
        top = sorted(acc.items(), key=lambda kv: -kv[1])[:8]
        in_ops = sum(t for name, t in acc.items() if name.startswith("aten::"))
        print(f"  {phase} {total[phase] / active / 1000:.1f} ms, of which {in_ops / active / 1000:.1f} in aten ops: "
              + ", ".join(f"{name.removeprefix('aten::')} {t / active / 1000:.1f}" for name, t in top))
    print()
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=48, max_shapes_column_width=60))


CONTENDERS = {"seqlab": "seqlab run_grpo", "trl": "TRL GRPOTrainer (fp32, no grad. checkpointing)",
              "trl_defaults": "TRL GRPOTrainer (its defaults: bf16 autocast, grad. checkpointing)"}


def report(results: dict) -> str:
    lines = ["| size | threads | contender | median s/step | best s/step | TRL / seqlab (medians) | "
             "TRL / seqlab (bests) | completion tokens/step | TRL / seqlab per token | generate share | "
             "other CPU (max) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in results["cells"]:
        s = cell["contenders"]["seqlab"]
        for who, c in cell["contenders"].items():
            other = max((x for x in c["others_cpu_share"] if x is not None), default=None)
            r1 = "base" if who == "seqlab" else f"{c['median_s'] / s['median_s']:.2f}x"
            r2 = "base" if who == "seqlab" else f"{c['best_s'] / s['best_s']:.2f}x"
            key = "median_ms_per_completion_token"
            r3 = "base" if who == "seqlab" else f"{c[key] / s[key]:.2f}x"
            lines.append(f"| {cell['size']} | {cell['threads']} | {CONTENDERS[who]} | {c['median_s']:.4f} | "
                         f"{c['best_s']:.4f} | {r1} | {r2} | {c['completion_tokens_median']:.0f} | {r3} | "
                         f"{c['share_of_step']['generate']:.0%} | "
                         f"{'?' if other is None else f'{other:.0%}'} |")
    lines += ["", "Phase medians per step, ms (each phase's median over steps; they need not add up to the step):",
              "", "| size | threads | contender | generate | reward | forward | backward | optimizer | step |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for cell in results["cells"]:
        for who, c in cell["contenders"].items():
            lines.append(f"| {cell['size']} | {cell['threads']} | {who} | "
                         + " | ".join(f"{c[f'{ph}_median_s'] * 1000:.2f}" for ph in PHASE_NAMES)
                         + f" | {c['median_s'] * 1000:.1f} |")
    return "\n".join(lines)


def run_in_process(job: dict) -> dict | None:
    """One run in a fresh process (`--child JOB`): its own allocator, thread pool and imports,
    nothing left over from the contender before it. None: the machine got busy (dropped)."""
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                       capture_output=True, text=True, cwd=HERE)
    for line in p.stdout.splitlines():
        if line.startswith("@@result "):
            return json.loads(line.removeprefix("@@result "))
    raise RuntimeError(f"{job['who']} run failed (exit {p.returncode}): {p.stderr[-2000:]}")


def child(job: dict) -> int:
    install_timers()
    setup_trl()
    torch.set_num_threads(job["threads"])
    out = Path(job["out"])
    if job["who"] == "seqlab":
        seqlab_wrappers()
        fn = functools.partial(run_seqlab, Path(job["base"]), Path(job["data"]), out, job["size"], job["threads"],
                               job["steps"], job["seed"])
    else:
        fn = functools.partial(run_trl, make_prompts(job["prompt_seed"]), hf_tokenizer(), out, job["size"],
                               job["threads"], job["steps"], job["seed"], trl_defaults=job["who"] == "trl_defaults")
    res = one_run(job["who"], fn, job["warmup"], job["limit"])
    print("@@result " + json.dumps(res), flush=True)
    return 0


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the raw numbers as JSON to this path")
    p.add_argument("--rounds", type=int, default=5, help="fresh runs per contender and cell (interleaved)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every run")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch thread counts to measure")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--trl-defaults", action="store_true",
                   help="also time TRL with GRPOConfig's own defaults (bf16 autocast, gradient checkpointing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each (size, threads) cell of each round, wait up to SECONDS for an idle machine")
    p.add_argument("--max-other", type=float, default=None, metavar="FRACTION",
                   help="drop and redo (up to --retries times, after waiting for quiet) a run during which other "
                        "processes used more than FRACTION of the machine, plus the cores the run does not need "
                        "(e.g. 0.15: 15%% for 2-thread runs, 65%% for 1-thread runs on 2 cores)")
    p.add_argument("--retries", type=int, default=5,
                   help="redos per run with --max-other (each after --wait-quiet, or 60 s, of waiting); then it is kept as is")
    p.add_argument("--profile", action="store_true",
                   help="after the benchmark, print a torch.profiler table of --steps seqlab steps per size "
                        "(at the first --threads value)")
    p.add_argument("--profile-only", action="store_true", help="only the --profile part")
    p.add_argument("--keep", help="keep the run directories in this folder (default: a temporary one)")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_grpo_"))
    work.mkdir(parents=True, exist_ok=True)
    install_timers()
    setup_trl()
    prompts = make_prompts(args.seed)
    base, data, sl_params = setup_seqlab(work, prompts, args.seed)
    tok = hf_tokenizer()
    hf_params = sum(p.numel() for p in hf_model(len(tok), args.seed).parameters())
    results = {"machine": machine_info(), "settings": vars(args),
               "shape": {"n_layer": 4, "n_head": 4, "n_embd": 64, "vocab": len(tok), "prompt_tokens": PROMPT_CHARS + 1,
                         "completion_tokens": NEW_TOKENS, "seqlab_params": sl_params, "gpt2_params": hf_params},
               "cells": []}
    if args.profile_only:
        for size in args.sizes:
            profile_seqlab(base, data, work, size, args.threads[0], args.seed, args.warmup, args.steps)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    names = ["seqlab", "trl"] + (["trl_defaults"] if args.trl_defaults else [])
    raw = {(size, th): {who: [] for who in names} for th in args.threads for size in args.sizes}
    n = 0
    dropped = {}
    for r in range(args.rounds):
        for th in args.threads:
            limit = busy_limit(args.max_other, th)
            for size in args.sizes:
                if args.wait_quiet > 0:
                    wait_for_quiet(args.wait_quiet, 0.10 if limit is None else limit)
                k = n % len(names)
                order = names[k:] + names[:k]  # rotate who goes first
                n += 1
                for who in order:
                    torch.set_num_threads(th)
                    steps = args.warmup + args.steps
                    out = work / f"{who}-{size}-t{th}-r{r}"
                    job = {"who": who, "size": size, "threads": th, "steps": steps, "seed": args.seed + r,
                           "out": str(out), "base": str(base), "data": str(data), "prompt_seed": args.seed,
                           "warmup": args.warmup, "limit": limit}
                    res = run_in_process(job)
                    tries = 0
                    while res is None:  # the machine got busy: wait, redo; past --retries keep what comes
                        tries += 1
                        key = f"{size} t{th} {who}"
                        dropped[key] = dropped.get(key, 0) + 1
                        shutil.rmtree(out, ignore_errors=True)
                        wait_for_quiet(args.wait_quiet or 60.0, limit)
                        res = run_in_process({**job, "limit": limit if tries < args.retries else None})
                    raw[(size, th)][who].append(res)
                    if not args.keep:
                        shutil.rmtree(out, ignore_errors=True)
                    share = res["others_cpu_share"]
                    log(f"[{time.perf_counter() - t_start:6.1f}s] round {r + 1}/{args.rounds} {size} t{th} {who}: "
                        f"median {statistics.median(res['step_s']):.4f} s/step, other CPU "
                        f"{'?' if share is None else f'{share:.0%}'}")
    for (size, th), runs in raw.items():
        cs = {who: summarise(runs[who]) for who in names}
        for who in names:
            if who != "seqlab":
                cs[who].update({k: runs[who][0][k] for k in ("optim", "attn_implementation", "bf16",
                                                             "gradient_checkpointing")})
        s, t = cs["seqlab"], cs["trl"]
        results["cells"].append({
            "size": size, "threads": th, "prompts_per_step": SIZES[size][0], "group_size": SIZES[size][1],
            "contenders": cs,
            "ratio_medians": t["median_s"] / s["median_s"], "ratio_bests": t["best_s"] / s["best_s"],
            "target_3x_met": t["median_s"] >= 3 * s["median_s"],
            "raw": runs})
    results["wall_s"] = time.perf_counter() - t_start
    results["dropped_runs"] = dropped
    m = results["machine"]
    print(f"GRPO step benchmark, {m['date']}")
    print(f"CPU: {m['cpu']} ({m['logical_cpus']} logical), torch {m['torch']}, transformers {m['transformers']}, "
          f"trl {m['trl']}, python {m['python']}, seqlab {m['seqlab']} @ {m.get('seqlab_git', '?')}")
    print(f"{args.rounds} rounds x {args.steps} timed steps (+{args.warmup} warm-up) per contender and cell; "
          f"prompt {PROMPT_CHARS + 1} tokens, completions {NEW_TOKENS} tokens; params seqlab {sl_params:,}, "
          f"GPT-2 {hf_params:,}")
    shares = [x for c in results["cells"] for v in c["contenders"].values() for x in v["others_cpu_share"]
              if x is not None]
    if shares:
        print(f"CPU used by other processes during the runs: median {statistics.median(shares):.0%}, "
              f"max {max(shares):.0%}")
        spoiled = [f"{c['size']} t{c['threads']} {who}" for c in results["cells"]
                   for who, v in c["contenders"].items()
                   if any(x is not None and x > busy_limit(0.15, c["threads"]) for x in v["others_cpu_share"])]
        if spoiled:
            print("WARNING: other processes used more than 15% of the machine (plus the cores a run does not "
                  "need) during some runs of: " + ", ".join(spoiled) + ". Timings of these tiny ops degrade "
                  "sharply under contention, 2-thread ones most; compare the bests, or rerun with --max-other.")
    if dropped:
        print("Runs dropped and redone because other processes got busy: "
              + ", ".join(f"{k} x{v}" for k, v in dropped.items()))
    print()
    print(report(results))
    print("\nTarget, seqlab >= 3x faster per step than TRL (fp32, medians): " + ", ".join(
        f"{c['size']} t{c['threads']} {'MET' if c['target_3x_met'] else 'MISSED'} ({c['ratio_medians']:.2f}x)"
        for c in results["cells"]))
    print(f"\n(total {results['wall_s']:.0f}s)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        log(f"wrote {args.out}")
    if args.profile:
        for size in args.sizes:
            profile_seqlab(base, data, work, size, args.threads[0], args.seed, args.warmup, args.steps)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
