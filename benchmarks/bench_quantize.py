"""float32 / int8 / int4 / dynamic precision of one run, side by side (issue: quantization).

    python benchmarks/bench_quantize.py smollm2 [--rounds 3] [--out benchmarks/raw/quantize-smollm2.json]
    python benchmarks/bench_quantize.py names   [--rounds 3] [--out benchmarks/raw/quantize-names.json]

For each variant of the run (float32; `seqlab quantize --bits 8`; `--bits 4` with group
32 and the head at 8 bits; dynamic: `--bits 4 --keep-budget B`): the weights file's size,
the KL divergence from float32's next-token distribution and the top-1 agreement on a
held-out set that calibration never saw, and decode tokens/s at batch 1 and 8 (greedy, 128
new tokens after a prompt, or as many as the context holds: 15 for names, whose timed
call is then 50 generate calls; each variant and batch in its own process with 2 threads, kept
up and driven round-robin, the order rotating each round; medians). For SmolLM2 also the
arithmetic word problems' held-out greedy accuracy of the model as imported (the
pretrained recipe's test split and system prompt).

Held-out sets: SmolLM2: the recipe's test questions through the chat template, followed
by float32's own greedy reply (teacher-forced: every variant is scored on the same
tokens). names: names.txt lines from the end of the file (the run trains on a prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("SEQLAB_BENCH_WORK", "/tmp/seqlab-bench-quantize"))
NAMES = HERE / "_peers" / "names.txt" if (HERE / "_peers" / "names.txt").exists() else \
    Path("/work/shared/data/names.txt")
THREADS = 2
NEW_TOKENS = 128


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(which: str, keep_budget: float) -> dict:
    """The float run and its quantized variants (made once, kept in WORK)."""
    from seqlab.interop.quantize import quantize_run

    base = WORK / which / "float"
    if not (base / "best.safetensors").exists():
        if which == "smollm2":
            from seqlab.interop.importer import import_model

            import_model("smollm2", base)
        else:  # a names transformer: makemore's default shape, trained on all but the last 2,000 names
            from seqlab.config import run_config_from_dict
            from seqlab.train import train

            lines = NAMES.read_text().split()
            train_file = WORK / which / "train.txt"
            train_file.parent.mkdir(parents=True, exist_ok=True)
            train_file.write_text("\n".join(lines[:-2000]) + "\n")
            cfg = run_config_from_dict({"data": {"path": str(train_file)},
                                        "model": {"type": "transformer", "n_layer": 4, "n_head": 4, "n_embd": 64,
                                                  "dropout": 0.0},
                                        "train": {"steps": 3000, "batch_size": 64, "lr": 2e-3, "threads": 2,
                                                  "eval_interval": 1000}})
            train(cfg, base, progress=False)
    variants = {"float32": str(base)}
    for name, kw in (("int8", {"bits": 8}), ("int4", {"bits": 4}),
                     (f"dynamic (int4, keep {keep_budget:g})", {"bits": 4, "keep_budget": keep_budget})):
        path = WORK / which / name.split()[0]
        if not (path / "best.safetensors").exists():
            r = quantize_run(base, path, group_size=32, **kw)
            log(f"{name}: calibration KL {r['kl']:.4f}, top-1 {r['top1_agreement']:.1%}")
        variants[name] = str(path)
    return variants


def heldout(which: str, float_run: str):
    """(ids (B, T), mask (B, T-1)) of held-out tokens, and the decode prompts."""
    import torch

    from seqlab.checkpoint import load_model
    from seqlab.sampling import DecodeRule, generate

    model, tok, _ = load_model(float_run)
    if which == "smollm2":
        from seqlab.post.prompting import prompt_format
        from seqlab.recipes.word_problems import SYSTEM, split

        test, _, _ = split(0, 300, 120, 4064)
        fmt = prompt_format(tok, True, SYSTEM)
        prompts = [fmt.prompt_ids(p.question) for p in test[:24]]
        gen = generate(model, prompts, 48, DecodeRule(temperature=0.0), fmt.end_id, tok.pad_id)
        rows = [p + r for p, r in zip(prompts, gen.rows())]
        starts = [len(p) - 1 for p in prompts]  # score the reply tokens only
        decode_prompts = [fmt.prompt_ids(p.question) for p in test[24:32]]
    else:
        lines = NAMES.read_text().split()[-2000:]
        rows = [tok.encode_prompt(x)[:model.max_len - 1] + [tok.eos_id] for x in lines[:500]]
        starts = [0] * len(rows)
        decode_prompts = [[tok.bos_id]] * 8
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T - 1)
    for b, (r, s) in enumerate(zip(rows, starts)):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, s:len(r) - 1] = 1.0
    return ids, mask, decode_prompts


def quality(variants: dict, ids, mask) -> dict:
    from seqlab.checkpoint import load_model
    from seqlab.interop.quantize import agreement, log_probs

    ref = None
    out = {}
    for name, run in variants.items():
        model, _, _ = load_model(run)
        lp = log_probs(model, ids)
        if ref is None:
            ref = lp
        out[name] = {**agreement(ref, lp, mask), "bytes": (Path(run) / "best.safetensors").stat().st_size,
                     "heldout_tokens": int(mask.sum())}
    return out


def arithmetic(variants: dict) -> dict:
    from seqlab.recipes.pretrained import PretrainedRecipeConfig, evaluate
    from seqlab.post.template import ReasoningTemplate
    from seqlab.recipes.word_problems import split

    cfg = PretrainedRecipeConfig()
    test, _, _ = split(cfg.seed, cfg.n_test, cfg.n_dev, cfg.n_sft + cfg.n_rl)
    res = {}
    for name, run in variants.items():
        t = time.perf_counter()
        r = evaluate(Path(run), test, ReasoningTemplate(), cfg)
        res[name] = {"accuracy": r["accuracy"], "format_rate": r["format_rate"], "per_kind": r["per_kind"],
                     "n": r["n"], "seconds": round(time.perf_counter() - t, 1)}
        log(f"  {name}: arithmetic test accuracy {r['accuracy']:.1%} ({r['n']} problems)")
    return res


def worker(run: str, batch: int, prompts_path: str, reps: int) -> None:
    import torch

    from seqlab.checkpoint import load_model
    from seqlab.sampling import DecodeRule, generate

    torch.set_num_threads(THREADS)
    model, tok, _ = load_model(run)
    prompts = json.loads(Path(prompts_path).read_text())[:batch]

    def call():  # `reps` generate calls: a names model's call (16 positions) is too short to time alone
        n = 0
        for _ in range(reps):
            with torch.inference_mode():
                gen = generate(model, prompts, NEW_TOKENS, DecodeRule(temperature=0.0), eos_id=-1, pad_id=tok.pad_id)
            n += int(gen.lengths.sum())
        return n

    call()
    print(json.dumps({"ready": True}), flush=True)
    sys.path.insert(0, str(HERE))
    from machine_load import serve_timed_calls

    serve_timed_calls(call, lambda s, n, others: print(json.dumps({"seconds": s, "tokens": n, "others": others}),
                                                        flush=True))


def speed(variants: dict, prompts: list, rounds: int, reps: int) -> dict:
    prompts_path = WORK / "decode_prompts.json"
    prompts_path.write_text(json.dumps(prompts))
    procs = {}
    for name, run in variants.items():
        for b in (1, 8):
            p = subprocess.Popen([sys.executable, __file__, "--worker", run, "--batch", str(b), "--prompts",
                                  str(prompts_path), "--reps", str(reps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if not p.stdout.readline():
                raise SystemExit(f"worker {name} b{b} failed")
            procs[(name, b)] = p
    from machine_load import drive_round_robin

    keys = list(procs)
    times, tokens, others = drive_round_robin(procs, rounds, lambda r, times, tokens: log(
        f"  round {r + 1}/{rounds}: " + ", ".join(f"{k[0]} b{k[1]} {tokens[k] / times[k][-1]:.0f}" for k in keys)))
    return {f"{k[0]} b{k[1]}": {"tok_s_median": tokens[k] / statistics.median(times[k]), "times": times[k],
                                 "tokens": tokens[k]} for k in keys} | {
        "others_share": statistics.median(others) if others else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="?", choices=["smollm2", "names"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep-budget", type=float, default=0.25)
    ap.add_argument("--no-arithmetic", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--worker")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--prompts")
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.batch, a.prompts, a.reps)
    if not a.which:
        ap.error("say smollm2 or names")
    import torch

    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(HERE))
    from bench_core import machine_info

    variants = prepare(a.which, a.keep_budget)
    ids, mask, prompts = heldout(a.which, variants["float32"])
    res = {"which": a.which, "machine": machine_info(), "variants": variants, "threads": THREADS,
           "quality": quality(variants, ids, mask)}
    for name, q in res["quality"].items():
        log(f"{name}: {q['bytes'] / 2**20:.1f} MiB, KL {q['kl']:.4f}, top-1 {q['top1_agreement']:.1%}")
    res["speed"] = speed(variants, prompts, a.rounds, 1 if a.which == "smollm2" else 50)
    if a.which == "smollm2" and not a.no_arithmetic:
        res["arithmetic"] = arithmetic(variants)
    quant = json.loads((Path(variants[[k for k in variants if k.startswith("dynamic")][0]]) /
                        "quantization.json").read_text())
    res["dynamic_kept"] = quant["report"].get("kept")
    out = Path(a.out or HERE / "raw" / f"quantize-{a.which}.json")
    out.write_text(json.dumps(res, indent=1))
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
