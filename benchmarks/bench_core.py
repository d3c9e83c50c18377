"""Core speed benchmark: seqlab against its peers at the same model size, in one run.
Every contender runs in a process of its own; the timed calls interleave round-robin.

    python benchmarks/bench_core.py [--out results.json] [--wait-quiet 300] [--device cuda]

(a) training step time (forward + backward + AdamW step, fp32, CPU)
    a1  seqlab Transformer vs Hugging Face GPT2LMHeadModel, 4 layers, 4 heads,
        64 dims, batch 32 x context 64 (random tokens, every target valid)
    a2  seqlab Transformer vs makemore's Transformer at makemore's default shape
        (4 layers, 4 heads, 64 dims, block 16 on names.txt, batch 32), on the
        same rows of names.txt; seqlab also with the batch trimmed to its
        longest row (what seqlab's trainer does)
    a3  the lecture's long strings (issue 21): 4 layers, 4 heads, 64 dims, batch 32 of
        seqlab's rule-18-47 lines (50-200 digits, block 201), seqlab packed (its trainer's
        default: several sequences per row, attention within each), seqlab padded to the
        batch's longest row (the trainer before packing), and makemore's Transformer on
        the same rows (its batches padded to the block)
(b) sampling throughput, batch 64 x 128 new tokens from a 1-token prompt,
    untrained model (no row stops early), 4 layers, 4 heads, 64 dims, context 256:
    seqlab with its KV cache, seqlab recomputing the whole prefix every token
    (makemore-style), and transformers `generate` with its cache.

With --device cuda every model and batch lives on the GPU, each timed call ends with
torch.cuda.synchronize(), the no-compiler row is left out (on a GPU seqlab always runs
its Python decode step), and section (c) runs too:
(c) training step at a GPU-sized shape: 6 layers, 6 heads, 384 dims, batch 32 x
    context 256, seqlab vs HF GPT2 (its defaults and the parity setting), float32
    and bf16 autocast (what seqlab's trainer uses on a GPU: dtype = "auto").

Every contender runs with torch.set_num_threads(2). Timings are interleaved
round-robin (the order rotates every round) so that noise from a shared
machine hits all contenders alike; each is warmed up first, and we report
medians (and bests) over the rounds; ratios are ratios of medians (and of
bests). Training batches are built before timing, for every contender: the
rows measure forward + backward + optimizer step only.

The script also reports how much of the machine other processes used during
each section: 2-thread timings of these tiny ops degrade by 10-100x when
another process holds a core, so results from a busy machine are not
comparable. --wait-quiet waits for an idle machine before each section; on a
busy machine --budget stops the repeats early so one run stays near 5 minutes.

makemore is not vendored: it is read from benchmarks/_peers/makemore.py (or
--makemore PATH) and skipped with a message when absent; see README.md.
transformers comes from `pip install -e .[bench]`; without it the HF rows are
skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from machine_load import serve_timed_calls, wait_for_quiet
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DEFAULT_MAKEMORE = HERE / "_peers" / "makemore.py"
DEFAULT_NAMES = Path("/work/shared/data/names.txt")
THREADS = 2


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    from seqlab.models import native

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        # seqlab's decode step: "native" (C++, models/native.py) or "python" (SEQLAB_NATIVE=0, no compiler)
        "seqlab_decode_step": "native" if native.load() is not None else "python",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        import seqlab

        info["seqlab"] = getattr(seqlab, "__version__", "?")
    except ImportError:
        info["seqlab"] = None
    try:  # which seqlab source was measured
        import subprocess

        git = ["git", "-C", str(HERE.parent)]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "src"], capture_output=True, text=True,
                               timeout=10)
        if head.returncode == 0:
            info["seqlab_git"] = head.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    if os.environ.get("SEQLAB_GIT"):  # a copied tree (a remote machine) whose .git may be absent or stale
        info["seqlab_git"] = os.environ["SEQLAB_GIT"]
    return info


def device_of(args) -> torch.device:
    return torch.device(getattr(args, "device", "cpu"))


def synced(fn, device: torch.device):
    """A timed call that includes the device's queued work (CUDA runs asynchronously)."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def summary(samples: list[float], scale: float = 1.0) -> dict:
    s = sorted(x * scale for x in samples)
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "n": len(s)}


def step_runner(model, optimizer, batches, steps: int, loss_fn, amp: torch.dtype | None = None):
    """A callable that runs `steps` training steps, cycling over `batches` (`amp`: the
    forward under autocast to that dtype, as seqlab's trainer does on a GPU)."""
    state = {"i": 0}
    device = next(model.parameters()).device

    def run():
        for _ in range(steps):
            x, y = batches[state["i"] % len(batches)]
            state["i"] += 1
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def seqlab_loss(model, x, y):
    _, loss = model(x, y)
    return loss


# --------------------------------------------------------------------------- peers


def load_makemore(path: Path):
    """Import makemore.py from `path` as a module (its __main__ block does not run)."""
    # makemore imports torch.utils.tensorboard at the top for its training loop's
    # logging; the classes we use do not need it, so stub it when it is missing.
    try:
        import torch.utils.tensorboard  # noqa: F401
    except Exception:
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = object
        sys.modules["torch.utils.tensorboard"] = stub
    spec = importlib.util.spec_from_file_location("makemore_peer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def hf_gpt2(vocab: int, n_positions: int, seed: int, pad: bool = True, activation: str | None = None,
            n_layer: int = 4, n_head: int = 4, n_embd: int = 64):
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    # generate() feeds sampled tokens back without a mask; when one equals the pad
    # id GPT-2 warns "may be padded" (harmless: no row is padded here)
    transformers.logging.set_verbosity_error()

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab, n_positions=n_positions, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        # seqlab's default is an untied lm_head: keep the parameter counts equal
        tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0 if pad else None,
        **({"activation_function": activation} if activation else {}),
    )
    return GPT2LMHeadModel(cfg)


def hf_generate_kwargs(n_new: int) -> dict:
    """transformers generate() settings that match seqlab's DecodeRule(): plain
    sampling at temperature 1 (top_k=0 switches off generate's default top-k 50),
    exactly n_new tokens per row (min_new_tokens masks eos until then)."""
    return dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=n_new,
                min_new_tokens=n_new, use_cache=True, pad_token_id=0)


def seqlab_transformer(vocab: int, block: int, seed: int, n_layer: int = 4, n_head: int = 4, n_embd: int = 64):
    from seqlab.config import ModelConfig
    from seqlab.models import build_model

    torch.manual_seed(seed)
    # dropout 0 like the peers (seqlab's default is 0.1); no biases (seqlab's default)
    return build_model(ModelConfig(type="transformer", n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                   block_size=block, dropout=0.0), vocab_size=vocab)


def seqlab_optimizer(model):
    from seqlab.config import TrainConfig
    from seqlab.engine import make_optimizer

    return make_optimizer(model, TrainConfig())


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- contenders
# Each contender is built (and timed) in its own process: `build(args, name)` returns a
# zero-arg callable (one timed call; it returns the new tokens it produced, or None) and
# a dict of facts about it. The parent (run_section) starts one worker per contender and
# interleaves the timed calls round-robin, so machine noise hits all alike and no
# contender shares a process (allocator, thread pool, caches) with another.

HF_DEFAULTS = "transformers GPT2LMHeadModel"
HF_PARITY = "transformers GPT2 (exact GELU, fused AdamW)"


def build_train_hf(args, name: str):
    """(a1) seqlab vs HF GPT2 at batch 32, context 64; HF also with seqlab's defaults
    (exact GELU instead of its tanh approximation, torch's fused AdamW)."""
    return _train_vs_hf(args, name, dict(n_layer=4, n_head=4, n_embd=64), 32, 64)


def _train_vs_hf(args, name: str, size: dict, B: int, T: int, amp: torch.dtype | None = None):
    dev = device_of(args)
    V = args.vocab
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (args.n_batches, B, T + 1), generator=g).to(dev)
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]
    if name.startswith("seqlab"):
        sl = seqlab_transformer(V, T, seed=1, **size).to(dev).train()
        return step_runner(sl, seqlab_optimizer(sl), batches, args.steps, seqlab_loss, amp), {"params": n_params(sl)}
    parity = "parity" in name or "exact GELU" in name
    hf = hf_gpt2(V, T, seed=1, pad=False, activation="gelu" if parity else None, **size).to(dev).train()
    # AdamW as a GPT-2 user writes it (torch's default implementation), or fused as seqlab's
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8,
                            fused=True if parity else None)

    def hf_loss(model, x, y):
        # loss on the same (x, y) pairs as seqlab; labels= would shift internally
        # and score T-1 positions instead of T
        logits = model(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1)

    return step_runner(hf, opt, batches, args.steps, hf_loss, amp), {
        "params": n_params(hf), "attn_implementation": hf.config._attn_implementation,
        "activation": hf.config.activation_function, "adamw": "fused" if parity else "torch default"}


MM_SEQLAB_FULL, MM_PEER, MM_SEQLAB_TRIM = ("seqlab (full block, trim=False)", "makemore Transformer",
                                           "seqlab (trim=True, trainer's batches)")


def build_train_makemore(args, name: str):
    """(a2) seqlab vs makemore's Transformer at makemore's default shape, same rows of names.txt."""
    from seqlab.data.lines import encode_lines, read_lines
    from seqlab.data.tokenizer import CharTokenizer

    mm = load_makemore(Path(args.makemore))
    dev = device_of(args)
    # makemore's create_datasets, without its random train/test split (timing only)
    names_path = Path(args.names)
    words = [w.strip() for w in names_path.read_text().splitlines()]
    words = [w for w in words if w]
    chars = sorted(set("".join(words)))
    ds = mm.CharDataset(words, chars, max(len(w) for w in words))
    block = ds.get_output_length()  # 16 on names.txt
    B = 32
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, len(words), (B,), generator=g) for _ in range(args.n_batches)]
    if name == MM_PEER:
        # makemore's batches exactly as its DataLoader collates them: stacked __getitem__ rows
        batches = []
        for r in rows:
            xs, ys = zip(*(ds[int(i)] for i in r))
            batches.append((torch.stack(xs).to(dev), torch.stack(ys).to(dev)))
        torch.manual_seed(1)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
            model = mm.Transformer(mm.ModelConfig(vocab_size=ds.get_vocab_size(), block_size=block,
                                                  n_layer=4, n_head=4, n_embd=64, n_embd2=64))
        model.to(dev).train()
        # makemore's own optimizer line (its defaults: lr 5e-4, weight decay 0.01)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)

        def mm_loss(m, x, y):
            return m(x, y)[1]

        return step_runner(model, opt, batches, args.steps, mm_loss), {"params": n_params(model),
                                                                        "vocab": ds.get_vocab_size()}
    tok = CharTokenizer.train(read_lines(names_path))
    enc = encode_lines(read_lines(names_path), tok, block_size=block)
    trim = name == MM_SEQLAB_TRIM
    batches = [tuple(t.to(dev) for t in enc.batch(r, tok.pad_id, trim=trim)) for r in rows]
    sl = seqlab_transformer(tok.vocab_size, block, seed=1).to(dev).train()
    meta = {"params": n_params(sl), "vocab": tok.vocab_size}
    if trim:
        meta["mean_width"] = statistics.mean(x.size(1) for x, _ in batches)
    return step_runner(sl, seqlab_optimizer(sl), batches, args.steps, seqlab_loss), meta


LONG_PACKED, LONG_PADDED, LONG_MM = ("seqlab (packed rows: the trainer's default)",
                                    "seqlab (padded to the batch's longest row)", "makemore Transformer")


def build_train_long(args, name: str):
    """(a3) batch 32 of 50-200-digit lines (the lecture's 100,000-line tasks), block 201."""
    from seqlab.data.lines import encode_lines
    from seqlab.data.tasks import get_task, make_lines
    from seqlab.data.tokenizer import CharTokenizer

    lines = make_lines(get_task("rule-18-47"), 5000, seed=0)
    dev = device_of(args)
    B = 32
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, len(lines), (B,), generator=g) for _ in range(args.n_batches)]
    if name == LONG_MM:
        mm = load_makemore(Path(args.makemore))
        chars = sorted(set("".join(lines)))
        ds = mm.CharDataset(lines, chars, max(len(w) for w in lines))
        batches = []
        for r in rows:
            xs, ys = zip(*(ds[int(i)] for i in r))
            batches.append((torch.stack(xs).to(dev), torch.stack(ys).to(dev)))
        torch.manual_seed(1)
        with contextlib.redirect_stdout(io.StringIO()):
            model = mm.Transformer(mm.ModelConfig(vocab_size=ds.get_vocab_size(), block_size=ds.get_output_length(),
                                                  n_layer=4, n_head=4, n_embd=64, n_embd2=64))
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)
        return step_runner(model, opt, batches, args.steps, lambda m, x, y: m(x, y)[1]), {
            "params": n_params(model), "block": ds.get_output_length(), "tokens_per_step": B * ds.get_output_length()}
    tok = CharTokenizer.train(lines)
    enc = encode_lines(lines, tok, block_size=max(len(w) for w in lines) + 1)
    sl = seqlab_transformer(tok.vocab_size, enc.tokens.size(1) - 1, seed=1).to(dev).train()
    if name == LONG_PACKED:
        packed = [enc.packed_batch(r, tok.pad_id, sl.packed_width(int(enc.lengths[r].max()) + 1)) for r in rows]
        batches = [(x.to(dev), y.to(dev), {"positions": p.to(dev), "starts": st.to(dev)}) for x, y, p, st in packed]
    else:
        batches = [tuple(t.to(dev) for t in enc.batch(r, tok.pad_id)) + ({},) for r in rows]
    meta = {"params": n_params(sl), "tokens_per_step": statistics.mean(x.numel() for x, _, _ in batches)}
    state = {"i": 0}
    opt = seqlab_optimizer(sl)

    def run():
        # the trainer's step: summed token losses over the batch's target count
        for _ in range(args.steps):
            x, y, packing = batches[state["i"] % len(batches)]
            state["i"] += 1
            _, loss = sl(x, y, loss_reduction="sum", **packing)
            opt.zero_grad(set_to_none=True)
            (loss / int((y != -1).sum())).backward()
            opt.step()

    return run, meta


GEN_SEQLAB, GEN_NO_NATIVE, GEN_UNCACHED, GEN_HF = (
    "seqlab generate (KV cache)", "seqlab generate (SEQLAB_NATIVE=0: no C++ compiler)", "seqlab uncached loop",
    "transformers generate (cache)")
EOS = 2


def build_generate(args, name: str):
    """(b) batch 64 x up to 128 new tokens from a 1-token prompt, untrained models, a real
    end-of-sequence id (2) on both sides: a row stops at its eos, and tokens/s counts the
    tokens produced (each row up to and including its eos)."""
    from seqlab.models import native
    from seqlab.sampling import DecodeRule, generate

    V, B, N, CTX = args.vocab, 64, 128, 256
    dev = device_of(args)
    if name == GEN_HF:
        hf = hf_gpt2(V, CTX, seed=2).to(dev).eval()
        prompt = torch.ones(B, 1, dtype=torch.long, device=dev)
        mask = torch.ones_like(prompt)

        def hf_gen():
            torch.manual_seed(0)
            with torch.inference_mode():
                out = hf.generate(input_ids=prompt, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                  temperature=1.0, max_new_tokens=N, use_cache=True, pad_token_id=0,
                                  eos_token_id=EOS)
            new = out[:, 1:]
            is_eos = new == EOS
            ended = is_eos.cumsum(1) - is_eos.long() > 0  # after a row's first eos (padding)
            return int((~ended).sum())

        return hf_gen, {"attn_implementation": hf.config._attn_implementation}
    sl = seqlab_transformer(V, CTX, seed=2).to(dev).eval()
    if name == GEN_UNCACHED:
        @torch.inference_mode()
        def sl_uncached():
            # makemore-style: the whole prefix goes through the model for every new token
            # (a fixed N tokens, no eos: the reference for what a KV cache saves)
            gen = torch.Generator(device=dev).manual_seed(0)
            idx = torch.ones(B, 1, dtype=torch.long, device=dev)
            for _ in range(N):
                logits, _ = sl(idx)
                probs = F.softmax(logits[:, -1, :], dim=-1)
                idx = torch.cat([idx, torch.multinomial(probs, 1, generator=gen)], dim=1)
            return B * N

        return sl_uncached, {}

    def sl_cached():
        out = generate(sl, [[1]] * B, N, DecodeRule(), eos_id=EOS, pad_id=0,
                       generator=torch.Generator().manual_seed(0))
        return int(out.lengths.sum())

    return sl_cached, {"decode_step": "native" if native.load() is not None and dev.type == "cpu" else "python"}


LARGE = dict(n_layer=6, n_head=6, n_embd=384)
LG_SEQLAB, LG_HF, LG_HF_PARITY, LG_SEQLAB_BF16, LG_HF_BF16 = (
    "seqlab fp32", "transformers GPT2 fp32", "transformers GPT2 fp32 (exact GELU, fused AdamW)",
    "seqlab bf16 autocast", "transformers GPT2 bf16 autocast")


def build_train_large(args, name: str):
    """(c) the GPU-sized shape: 6 x 6 x 384, batch 32 x 256, float32 and bf16 autocast."""
    amp = torch.bfloat16 if "bf16" in name else None
    return _train_vs_hf(args, name, LARGE, 32, 256, amp)


SECTIONS = {
    "train_hf": {"names": ["seqlab", HF_DEFAULTS, HF_PARITY], "build": build_train_hf, "unit": "step",
                 "budget": 0.3},
    "train_makemore": {"names": [MM_SEQLAB_FULL, MM_PEER, MM_SEQLAB_TRIM], "build": build_train_makemore,
                       "unit": "step", "budget": 0.2},
    "train_long": {"names": [LONG_PACKED, LONG_PADDED, LONG_MM], "build": build_train_long, "unit": "step",
                   "budget": 0.3},
    "generate": {"names": [GEN_SEQLAB, GEN_NO_NATIVE, GEN_UNCACHED, GEN_HF], "build": build_generate,
                 "unit": "token", "budget": 0.4, "env": {GEN_NO_NATIVE: {"SEQLAB_NATIVE": "0"}},
                 "cap": {GEN_UNCACHED: "uncached_repeats"}, "no_warmup": (GEN_UNCACHED,)},
    "train_large": {"names": [LG_SEQLAB, LG_HF, LG_HF_PARITY, LG_SEQLAB_BF16, LG_HF_BF16], "build": build_train_large,
                    "unit": "step", "budget": 0.3, "gpu_only": True},
}
CPU_ONLY_CONTENDERS = (GEN_NO_NATIVE,)  # on a GPU seqlab's decode step is the Python one anyway


def worker(args) -> int:
    """One contender in this process: build, warm up, then time one call per 'go' line."""
    torch.set_num_threads(THREADS)
    sec = SECTIONS[args.worker]
    try:
        fn, meta = sec["build"](args, args.contender)
    except (ImportError, FileNotFoundError, OSError) as e:
        print("@@skip " + json.dumps(f"{type(e).__name__}: {e}"), flush=True)
        return 0
    fn = synced(fn, device_of(args))
    if args.contender not in sec.get("no_warmup", ()):
        fn()  # warm-up (allocator, lazy init, oneDNN primitive caches)
    meta = {**meta, "torch_threads": torch.get_num_threads()}
    print("@@ready " + json.dumps(meta), flush=True)
    serve_timed_calls(fn, lambda seconds, produced, others: print(
        "@@time " + json.dumps([seconds, produced, others]), flush=True))
    return 0


def _reply(p) -> tuple[str, object]:
    for line in p.stdout:
        if line.startswith("@@"):
            kind, _, payload = line[2:].partition(" ")
            return kind, json.loads(payload)
    raise RuntimeError(f"worker exited (code {p.wait()})")


def run_section(name: str, args) -> dict:
    """Start one process per contender, then interleave their timed calls round-robin."""
    sec = SECTIONS[name]
    env_args = json.dumps({k: v for k, v in vars(args).items() if k not in ("worker", "contender")})
    procs, meta, skipped = {}, {}, {}
    for c in sec["names"]:  # one at a time: a worker's build and warm-up do not overlap another's
        if args.device != "cpu" and c in CPU_ONLY_CONTENDERS:
            continue
        env = {**os.environ, "SEQLAB_BENCH_ARGS": env_args, **sec.get("env", {}).get(c, {})}
        p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", name, "--contender", c],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE)
        kind, payload = _reply(p)
        if kind == "skip":
            skipped[c] = payload
            log(f"SKIP {name}/{c}: {payload}")
            p.wait()
            continue
        procs[c], meta[c] = p, payload
    repeats = args.repeats if sec["unit"] == "step" else args.gen_repeats
    caps = {c: getattr(args, attr) for c, attr in sec.get("cap", {}).items()}
    names = list(procs)
    times = {c: [] for c in names}
    produced, others = {}, []
    t_start = time.perf_counter()
    budget = args.budget * sec["budget"]
    try:
        for r in range(repeats if names else 0):
            if r >= 3 and time.perf_counter() - t_start > budget:
                log(f"  time budget of {budget:.0f}s spent: stopping after {r} rounds")
                break
            for c in names[r % len(names):] + names[: r % len(names)]:
                if len(times[c]) >= caps.get(c, repeats):
                    continue
                procs[c].stdin.write("go\n")
                procs[c].stdin.flush()
                _, (seconds, n, share) = _reply(procs[c])
                times[c].append(seconds)
                produced[c] = n
                if share is not None:
                    others.append(share)
    finally:
        for p in procs.values():
            with contextlib.suppress(OSError):
                p.stdin.write("quit\n")
                p.stdin.close()
            p.wait()
    return {"times": times, "meta": meta, "produced": produced, "skipped": skipped,
            "others_cpu_share": statistics.median(others) if others else None}


def bench_section(name: str, args, results: dict) -> None:
    if name == "train_makemore" and not Path(args.makemore).is_file():
        log(f"SKIP {name}: {args.makemore} not found. Get it with (see benchmarks/README.md):\n"
            f"  git clone https://github.com/karpathy/makemore /tmp/makemore && "
            f"cp /tmp/makemore/makemore.py {DEFAULT_MAKEMORE}\n  or pass --makemore PATH")
        results[name] = {"skipped": f"{args.makemore} not found"}
        return
    got = run_section(name, args)
    if name == "generate":
        sec = {"shape": {"batch": 64, "max_new_tokens": 128, "eos_id": EOS, "context": 256, "vocab": args.vocab,
                         "n_layer": 4, "n_head": 4, "n_embd": 64}, "contenders": {}}
        for c, v in got["times"].items():
            s = summary(v)
            n = got["produced"][c]
            sec["contenders"][c] = {"median_s": s["median"], "min_s": s["min"], "max_s": s["max"], "n": s["n"],
                                    "tokens_per_call": n, "tokens_per_s": n / s["median"],
                                    "best_tokens_per_s": n / s["min"], **got["meta"][c]}
    else:
        sec = {"steps_per_round": args.steps,
               "contenders": {c: {**summary(v, 1000.0 / args.steps), "unit": "ms/step", **got["meta"][c]}
                              for c, v in got["times"].items()}}
    if got["skipped"]:
        sec["skipped_contenders"] = got["skipped"]
    if got["others_cpu_share"] is not None:  # median over the timed calls, seen by the timed process
        sec["others_cpu_share"] = round(got["others_cpu_share"], 3)
    results[name] = sec


# --------------------------------------------------------------------------- report


def report(results: dict) -> tuple[str, dict]:
    """Markdown table + target verdicts (verdicts use medians, as the table's first ratio)."""
    lines = ["| benchmark | contender | median | best | ratio (medians) | ratio (bests) |",
             "|---|---|---:|---:|---:|---:|"]
    targets = {}

    def train_rows(key, title, base):
        sec = results.get(key)
        if not sec:
            return  # not selected (--only)
        if "skipped" in sec:
            lines.append(f"| {title} | skipped: {sec['skipped']} | | | | |")
            return
        c = sec["contenders"]

        def base_of(name):  # a bf16 contender against seqlab in bf16, when that ran
            return LG_SEQLAB_BF16 if "bf16" in name and LG_SEQLAB_BF16 in c else base

        for name, s in c.items():
            b = c[base_of(name)]
            if name == base_of(name):
                r1 = r2 = "base"
            else:
                r1 = f"{s['median'] / b['median']:.2f}x {base_of(name)}'s time"
                r2 = f"{s['min'] / b['min']:.2f}x"
            lines.append(f"| {title} | {name} | {s['median']:.1f} ms/step | {s['min']:.1f} ms/step | {r1} | {r2} |")
        for name, s in c.items():
            if not name.startswith("seqlab"):
                targets[f"{title}: seqlab step no slower than {name}"] = c[base_of(name)]["median"] <= s["median"]
        for name, note in sec.get("skipped_contenders", {}).items():
            lines.append(f"| {title} | {name}: skipped ({note}) | | | | |")

    train_rows("train_hf", "train B32 T64", "seqlab")
    train_rows("train_makemore", "train B32 block16 names", "seqlab (full block, trim=False)")
    train_rows("train_long", "train B32 lines of 50-200 (block 201)", LONG_PACKED)
    train_rows("train_large", "train 6x6x384 B32 T256", LG_SEQLAB)
    sec = results.get("generate")
    if sec:
        c = sec["contenders"]
        b = c["seqlab generate (KV cache)"]
        for name, s in c.items():
            if name == "seqlab generate (KV cache)":
                r1 = r2 = "base"
            else:
                r1 = f"seqlab cached {b['tokens_per_s'] / s['tokens_per_s']:.2f}x faster"
                r2 = f"{b['best_tokens_per_s'] / s['best_tokens_per_s']:.2f}x"
            lines.append(f"| sample B64, up to 128 new, eos 2 | {name} ({s['tokens_per_call']:,} tokens) | "
                         f"{s['tokens_per_s']:,.0f} tok/s | {s['best_tokens_per_s']:,.0f} tok/s | {r1} | {r2} |")
        hf = c.get("transformers generate (cache)")
        if hf:
            targets["sampling: seqlab cached >= 3x transformers generate new tok/s"] = \
                b["tokens_per_s"] >= 3 * hf["tokens_per_s"]
    out = "\n".join(lines)
    if targets:
        out += "\n\nTargets (medians):\n" + "\n".join(
            f"- {name}: {'MET' if ok else 'MISSED'}" for name, ok in targets.items())
    return out, targets


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the raw results as JSON to this path")
    p.add_argument("--makemore", default=str(DEFAULT_MAKEMORE), help="path to makemore.py")
    p.add_argument("--names", default=str(DEFAULT_NAMES), help="names.txt (one name per line)")
    p.add_argument("--budget", type=float, default=200.0,
                   help="seconds; on a busy machine, sections stop repeating (after 3 rounds) past their share")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per training contender")
    p.add_argument("--steps", type=int, default=20, help="training steps per round")
    p.add_argument("--gen-repeats", type=int, default=15, help="timed generate calls per contender")
    p.add_argument("--uncached-repeats", type=int, default=3,
                   help="timed calls of the (slow, reference-only) uncached sampling loop")
    p.add_argument("--n-batches", type=int, default=16, help="distinct pre-built batches to cycle over")
    p.add_argument("--vocab", type=int, default=65, help="vocabulary for the B32xT64 and sampling runs")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each section, wait up to SECONDS for other processes to go idle")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda: adds the train_large section)")
    p.add_argument("--only", choices=list(SECTIONS), action="append",
                   help="run only these sections (repeatable)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--contender", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:  # one contender, driven by the parent over stdin/stdout
        saved = json.loads(os.environ["SEQLAB_BENCH_ARGS"])
        for k, v in saved.items():
            setattr(args, k, v)
        return worker(args)
    args.names, args.makemore = str(Path(args.names).resolve()), str(Path(args.makemore).resolve())  # workers: cwd HERE
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    results = {"machine": machine_info(), "settings": vars(args)}
    sections = [(name, None) for name in SECTIONS]
    for name, _ in sections:
        if args.only and name not in args.only:
            continue
        if SECTIONS[name].get("gpu_only") and args.device == "cpu" and not args.only:
            continue
        if args.wait_quiet > 0:
            wait_for_quiet(args.wait_quiet)
        log(f"[{time.perf_counter() - t0:6.1f}s] {name} ...")
        bench_section(name, args, results)
    results["wall_s"] = time.perf_counter() - t0
    table, targets = report(results)
    results["targets"] = targets
    m = results["machine"]
    print(f"seqlab core benchmark, {m['date']}")
    if args.device != "cpu":
        print(f"device: {args.device} ({m.get('gpu', '?')}, CUDA {m.get('cuda', '?')})")
    print(f"CPU: {m['cpu']} ({m['cpus_usable']} usable cores), torch {m['torch']} "
          f"({THREADS} threads), transformers {m['transformers']}, python {m['python']}, "
          f"seqlab {m['seqlab']} @ {m.get('seqlab_git', '?')}")
    shares = {k: results[k].get("others_cpu_share") for k, _ in sections if k in results}
    known = {k: v for k, v in shares.items() if v is not None}
    if known:
        print("CPU used by other processes during each section (share of the whole machine): "
              + ", ".join(f"{k} {v:.0%}" for k, v in known.items()))
    if any(v is not None and v > 0.15 for v in shares.values()):
        print("WARNING: the machine was busy; 2-thread timings of small ops degrade sharply under "
              "contention. Prefer a quiet machine, and compare the 'bests' column too.")
    print()
    print(table)
    print(f"\n(total {results['wall_s']:.0f}s)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
