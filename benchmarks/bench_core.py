"""Core speed benchmark: seqlab against its peers at the same model size, in one run.

    python benchmarks/bench_core.py [--out results.json] [--wait-quiet 300]

(a) training step time (forward + backward + AdamW step, fp32, CPU)
    a1  seqlab Transformer vs Hugging Face GPT2LMHeadModel, 4 layers, 4 heads,
        64 dims, batch 32 x context 64 (random tokens, every target valid)
    a2  seqlab Transformer vs makemore's Transformer at makemore's default shape
        (4 layers, 4 heads, 64 dims, block 16 on names.txt, batch 32), on the
        same rows of names.txt; seqlab also with the batch trimmed to its
        longest row (what seqlab's trainer does)
(b) sampling throughput, batch 64 x 128 new tokens from a 1-token prompt,
    untrained model (no row stops early), 4 layers, 4 heads, 64 dims, context 256:
    seqlab with its KV cache, seqlab recomputing the whole prefix every token
    (makemore-style), and transformers `generate` with its cache.

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
import sys
import time
import types
from pathlib import Path

import torch
from machine_load import CpuMeter, wait_for_quiet
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
    return info


def rounds(contenders: dict, repeats: int, only_repeats: dict | None = None, no_warmup=(),
           budget_s: float = float("inf"), min_repeats: int = 3) -> dict:
    """Time zero-arg callables, interleaved round-robin; one warm-up call each first.

    `only_repeats` caps the timed calls of some contenders (expensive reference
    rows); `no_warmup` names contenders that skip the warm-up call. Once
    `budget_s` has passed (a busy machine), rounds stop after `min_repeats`.
    Returns name -> list of seconds per call.
    """
    t_start = time.perf_counter()
    only_repeats = only_repeats or {}
    names = list(contenders)
    for name in names:  # warm-up (allocator, lazy init, oneDNN primitive caches)
        if name not in no_warmup:
            contenders[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        if r >= min_repeats and time.perf_counter() - t_start > budget_s:
            log(f"  time budget of {budget_s:.0f}s spent: stopping after {r} rounds")
            break
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            cap = only_repeats.get(name, repeats)
            if len(times[name]) >= cap:
                continue
            if cap < repeats and times[name] and time.perf_counter() - t_start > budget_s:
                continue  # capped reference rows: one timed call is enough on a busy machine
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def summary(samples: list[float], scale: float = 1.0) -> dict:
    s = sorted(x * scale for x in samples)
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "n": len(s)}


def step_runner(model, optimizer, batches, steps: int, loss_fn):
    """A callable that runs `steps` training steps, cycling over `batches`."""
    state = {"i": 0}

    def run():
        for _ in range(steps):
            x, y = batches[state["i"] % len(batches)]
            state["i"] += 1
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


def hf_gpt2(vocab: int, n_positions: int, seed: int, pad: bool = True):
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    # generate() feeds sampled tokens back without a mask; when one equals the pad
    # id GPT-2 warns "may be padded" (harmless: no row is padded here)
    transformers.logging.set_verbosity_error()

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab, n_positions=n_positions, n_layer=4, n_head=4, n_embd=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        # seqlab's default is an untied lm_head: keep the parameter counts equal
        tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0 if pad else None,
    )
    return GPT2LMHeadModel(cfg)


def hf_generate_kwargs(n_new: int) -> dict:
    """transformers generate() settings that match seqlab's DecodeRule(): plain
    sampling at temperature 1 (top_k=0 switches off generate's default top-k 50),
    exactly n_new tokens per row (min_new_tokens masks eos until then)."""
    return dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=n_new,
                min_new_tokens=n_new, use_cache=True, pad_token_id=0)


def seqlab_transformer(vocab: int, block: int, seed: int):
    from seqlab.config import ModelConfig
    from seqlab.models import build_model

    torch.manual_seed(seed)
    # dropout 0 like the peers (seqlab's default is 0.1); no biases (seqlab's default)
    return build_model(ModelConfig(type="transformer", n_layer=4, n_head=4, n_embd=64, block_size=block, dropout=0.0),
                       vocab_size=vocab)


def seqlab_optimizer(model):
    from seqlab.config import TrainConfig
    from seqlab.engine import make_optimizer

    return make_optimizer(model, TrainConfig())


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------- benchmarks


def bench_train_hf(args, results: dict) -> None:
    """(a1) seqlab vs HF GPT2 at batch 32, context 64."""
    V, B, T = args.vocab, 32, 64
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (args.n_batches, B, T + 1), generator=g)
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]

    contenders, meta = {}, {}
    sl = seqlab_transformer(V, T, seed=1).train()
    contenders["seqlab"] = step_runner(sl, seqlab_optimizer(sl), batches, args.steps, seqlab_loss)
    meta["seqlab"] = {"params": n_params(sl)}
    try:
        hf = hf_gpt2(V, T, seed=1, pad=False).train()  # no pad id: nothing to mask
    except ImportError:
        hf = None
        log("SKIP a1/transformers: transformers is not installed (pip install -e .[bench])")
    if hf is not None:
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)

        def hf_loss(model, x, y):
            # loss on the same (x, y) pairs as seqlab; labels= would shift internally
            # and score T-1 positions instead of T
            logits = model(input_ids=x, use_cache=False).logits
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1)

        contenders["transformers GPT2LMHeadModel"] = step_runner(hf, opt, batches, args.steps, hf_loss)
        meta["transformers GPT2LMHeadModel"] = {"params": n_params(hf),
                                                "attn_implementation": hf.config._attn_implementation}
    times = rounds(contenders, args.repeats, budget_s=args.budget * 0.3)
    results["train_hf"] = {
        "shape": {"batch": B, "context": T, "vocab": V, "n_layer": 4, "n_head": 4, "n_embd": 64},
        "steps_per_round": args.steps,
        "contenders": {k: {**summary(v, 1000.0 / args.steps), "unit": "ms/step", **meta[k]}
                       for k, v in times.items()},
    }


def bench_train_makemore(args, results: dict) -> None:
    """(a2) seqlab vs makemore's Transformer at makemore's default shape, same rows of names.txt."""
    from seqlab.data.lines import encode_lines, read_lines
    from seqlab.data.tokenizer import CharTokenizer

    path = Path(args.makemore)
    if not path.is_file():
        log(f"SKIP a2/makemore: {path} not found. Get it with (see benchmarks/README.md):\n"
            f"  git clone https://github.com/karpathy/makemore /tmp/makemore && "
            f"cp /tmp/makemore/makemore.py {DEFAULT_MAKEMORE}\n  or pass --makemore PATH")
        results["train_makemore"] = {"skipped": f"{path} not found"}
        return
    names_path = Path(args.names)
    if not names_path.is_file():
        log(f"SKIP a2/makemore: names file {names_path} not found (pass --names PATH)")
        results["train_makemore"] = {"skipped": f"{names_path} not found"}
        return
    mm = load_makemore(path)

    # makemore's create_datasets, without its random train/test split (timing only)
    words = [w.strip() for w in names_path.read_text().splitlines()]
    words = [w for w in words if w]
    chars = sorted(set("".join(words)))
    max_len = max(len(w) for w in words)
    ds = mm.CharDataset(words, chars, max_len)
    block = ds.get_output_length()  # 16 on names.txt
    mm_vocab = ds.get_vocab_size()  # 27

    tok = CharTokenizer.train(read_lines(names_path))
    enc = encode_lines(read_lines(names_path), tok, block_size=block)
    assert len(enc) == len(words)

    B = 32
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, len(words), (B,), generator=g) for _ in range(args.n_batches)]
    # makemore's batches exactly as its DataLoader collates them: stacked __getitem__ rows
    mm_batches = []
    for r in rows:
        xs, ys = zip(*(ds[int(i)] for i in r))
        mm_batches.append((torch.stack(xs), torch.stack(ys)))
    sl_full = [enc.batch(r, tok.pad_id, trim=False) for r in rows]
    sl_trim = [enc.batch(r, tok.pad_id, trim=True) for r in rows]
    assert sl_full[0][0].shape == mm_batches[0][0].shape == (B, block)

    torch.manual_seed(1)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
        mm_model = mm.Transformer(mm.ModelConfig(vocab_size=mm_vocab, block_size=block,
                                                 n_layer=4, n_head=4, n_embd=64, n_embd2=64))
    mm_model.train()
    # makemore's own optimizer line (its defaults: lr 5e-4, weight decay 0.01)
    mm_opt = torch.optim.AdamW(mm_model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)

    def mm_run_factory(steps):
        state = {"i": 0}

        def run():  # makemore's training loop body, minus DataLoader and logging
            for _ in range(steps):
                X, Y = mm_batches[state["i"] % len(mm_batches)]
                state["i"] += 1
                logits, loss = mm_model(X, Y)
                mm_model.zero_grad(set_to_none=True)
                loss.backward()
                mm_opt.step()

        return run

    sl_a = seqlab_transformer(tok.vocab_size, block, seed=1).train()
    sl_b = seqlab_transformer(tok.vocab_size, block, seed=1).train()
    contenders = {
        "seqlab (full block, trim=False)": step_runner(sl_a, seqlab_optimizer(sl_a), sl_full, args.steps, seqlab_loss),
        "makemore Transformer": mm_run_factory(args.steps),
        "seqlab (trim=True, trainer's batches)": step_runner(sl_b, seqlab_optimizer(sl_b), sl_trim, args.steps,
                                                             seqlab_loss),
    }
    meta = {
        "seqlab (full block, trim=False)": {"params": n_params(sl_a), "vocab": tok.vocab_size},
        "makemore Transformer": {"params": n_params(mm_model), "vocab": mm_vocab},
        "seqlab (trim=True, trainer's batches)": {
            "params": n_params(sl_b), "vocab": tok.vocab_size,
            "mean_width": statistics.mean(x.size(1) for x, _ in sl_trim)},
    }
    times = rounds(contenders, args.repeats, budget_s=args.budget * 0.2)
    results["train_makemore"] = {
        "shape": {"batch": B, "block": block, "n_layer": 4, "n_head": 4, "n_embd": 64},
        "makemore_path": str(path),
        "steps_per_round": args.steps,
        "contenders": {k: {**summary(v, 1000.0 / args.steps), "unit": "ms/step", **meta[k]}
                       for k, v in times.items()},
    }


def bench_generate(args, results: dict) -> None:
    """(b) batch 64 x 128 new tokens from a 1-token prompt, untrained models."""
    from seqlab.models import native
    from seqlab.sampling import DecodeRule, generate

    V, B, N, CTX = args.vocab, 64, 128, 256
    new_tokens = B * N
    sl = seqlab_transformer(V, CTX, seed=2).eval()

    def sl_cached():
        out = generate(sl, [[1]] * B, N, DecodeRule(), eos_id=-1, pad_id=0,
                       generator=torch.Generator().manual_seed(0))
        assert out.tokens.shape == (B, N) and bool((out.lengths == N).all())

    def sl_python_step():
        # the same sampler with the Python decode step (what runs without a C++ compiler)
        real = native.pack
        native.pack = lambda model: None
        try:
            sl_cached()
        finally:
            native.pack = real

    @torch.inference_mode()
    def sl_uncached():
        # makemore-style: the whole prefix goes through the model for every new token
        gen = torch.Generator().manual_seed(0)
        idx = torch.ones(B, 1, dtype=torch.long)
        for _ in range(N):
            logits, _ = sl(idx)
            probs = F.softmax(logits[:, -1, :], dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            idx = torch.cat([idx, nxt], dim=1)
        assert idx.shape == (B, N + 1)

    contenders = {"seqlab generate (KV cache)": sl_cached, "seqlab generate (Python step)": sl_python_step,
                  "seqlab uncached loop": sl_uncached}
    meta = {}
    try:
        hf = hf_gpt2(V, CTX, seed=2).eval()
    except ImportError:
        hf = None
        log("SKIP b/transformers: transformers is not installed (pip install -e .[bench])")
    if hf is not None:
        meta["transformers generate (cache)"] = {"attn_implementation": hf.config._attn_implementation}
        prompt = torch.ones(B, 1, dtype=torch.long)
        mask = torch.ones_like(prompt)

        def hf_gen():
            torch.manual_seed(0)
            with torch.inference_mode():
                out = hf.generate(input_ids=prompt, attention_mask=mask, **hf_generate_kwargs(N))
            assert out.shape == (B, N + 1), out.shape
            assert not bool((out[:, 1:] == hf.generation_config.eos_token_id).any())  # no early eos

        contenders["transformers generate (cache)"] = hf_gen
    times = rounds(contenders, args.gen_repeats, only_repeats={"seqlab uncached loop": args.uncached_repeats},
                   no_warmup=("seqlab uncached loop",), budget_s=args.budget * 0.4)
    results["generate"] = {
        "shape": {"batch": B, "new_tokens": N, "context": CTX, "vocab": V, "n_layer": 4, "n_head": 4,
                  "n_embd": 64},
        "contenders": {},
    }
    for k, v in times.items():
        s = summary(v)
        results["generate"]["contenders"][k] = {
            "median_s": s["median"], "min_s": s["min"], "max_s": s["max"], "n": s["n"],
            "tokens_per_s": new_tokens / s["median"], "best_tokens_per_s": new_tokens / s["min"],
            **meta.get(k, {}),
        }


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
        b = c[base]
        for name, s in c.items():
            if name == base:
                r1 = r2 = "base"
            else:
                r1 = f"{s['median'] / b['median']:.2f}x seqlab's time"
                r2 = f"{s['min'] / b['min']:.2f}x"
            lines.append(f"| {title} | {name} | {s['median']:.1f} ms/step | {s['min']:.1f} ms/step | {r1} | {r2} |")
        for name, s in c.items():
            if not name.startswith("seqlab"):
                targets[f"{title}: seqlab step no slower than {name}"] = b["median"] <= s["median"]

    train_rows("train_hf", "train B32 T64", "seqlab")
    train_rows("train_makemore", "train B32 block16 names", "seqlab (full block, trim=False)")
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
            lines.append(f"| sample B64 x 128 new | {name} | {s['tokens_per_s']:,.0f} tok/s | "
                         f"{s['best_tokens_per_s']:,.0f} tok/s | {r1} | {r2} |")
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
    p.add_argument("--only", choices=["train_hf", "train_makemore", "generate"], action="append",
                   help="run only these sections (repeatable)")
    args = p.parse_args(argv)

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    results = {"machine": machine_info(), "settings": vars(args)}
    sections = [("train_hf", bench_train_hf), ("train_makemore", bench_train_makemore),
                ("generate", bench_generate)]
    for name, fn in sections:
        if args.only and name not in args.only:
            continue
        if args.wait_quiet > 0:
            wait_for_quiet(args.wait_quiet)
        log(f"[{time.perf_counter() - t0:6.1f}s] {name} ...")
        torch.set_num_threads(THREADS)
        meter = CpuMeter()
        fn(args, results)
        share = meter.others_share()
        if name in results and share is not None:
            results[name]["others_cpu_share"] = round(share, 3)
    results["wall_s"] = time.perf_counter() - t0
    table, targets = report(results)
    results["targets"] = targets
    m = results["machine"]
    print(f"seqlab core benchmark, {m['date']}")
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
