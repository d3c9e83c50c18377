"""`seqlab recipe arithmetic --base SRC`: the GRPO workshop on a real pretrained chat
model (SmolLM2-135M-Instruct by default), on a CPU.

    data     held-out test and dev word problems, disjoint training problems (word_problems.py)
    base     the model imported as is (seqlab import), asked with the workshop's system prompt
    SFT      a short priming of the reasoning format with LoRA (a few dozen worked examples)
    GRPO     LoRA, format + exact-answer + numeric-distance rewards, a wall-clock budget

Every prompt goes through the model's chat template with the system prompt. After each
stage: greedy accuracy on dev and test, per kind of problem (the answer between the
solution tags, or the reply's last number when it ignores the format: the imported model
is scored on its arithmetic, not on tags it was never shown), and the rate of replies in
the exact format. Stages are kept across `--resume`; an interrupted GRPO stage continues
from its last checkpoint with its wall-clock budget as it was.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import atomic
from ..checkpoint import load_model, release_freed_memory
from ..errors import SeqlabError
from ..post.config import PostConfig
from ..post.prompting import prompt_format
from ..post.template import ReasoningTemplate
from ..sampling import DecodeRule, generate
from .word_problems import KINDS, SYSTEM, WordProblem, reply_answer, rl_row, sft_row, split

REWARDS = ["format_exact", "answer_exact", "answer_distance"]


@dataclass
class PretrainedRecipeConfig:
    base: str = "smollm2"
    seed: int = 0
    n_test: int = 300
    n_dev: int = 120
    n_sft: int = 64
    n_rl: int = 4000
    sft_steps: int = 24
    sft_lr: float = 2e-4
    rl_minutes: float = 30.0
    rl_lr: float = 2e-4
    lora_rank: int = 16
    group_size: int = 8
    prompts_per_step: int = 4
    max_new_tokens: int = 64
    micro_batch: int = 4  # rows per forward + backward (GRPO and SFT): bounds their activations' memory
    threads: int = 0  # 0: torch's default (all cores)
    device: str = "cpu"  # evaluation and post-training
    # SFT and GRPO precision (post.dtype): "bfloat16" trains under bf16 autocast and samples
    # with bf16 weights (on a CPU with AVX512-BF16 a GRPO update takes ~0.6x float32's
    # time: more updates in rl_minutes); the evaluation stays float32
    dtype: str = "float32"
    eval_batch: int = 50
    # the SFT examples' working out: "direct" ("45+78=123") or "columns" (digit by digit:
    # "45+78: 5+8=13, 4+7+1=12, so 45+78=123"; needs max_new_tokens ~128)
    working: str = "direct"

    def __post_init__(self):
        if self.working not in ("direct", "columns"):
            raise SeqlabError(f"recipe working: expected 'direct' or 'columns', got {self.working!r}")


def working_preset(working: str) -> dict:
    """The recipe settings that go with a working-out style. Digit-by-digit working is a
    procedure to learn, not only a format: more examples and updates (~9 minutes of one
    core in bf16), and twice the new tokens."""
    if working == "columns":
        return dict(working="columns", n_sft=320, sft_steps=120, sft_lr=3e-4, max_new_tokens=128)
    return dict(working=working)  # "direct", or a wrong value that PretrainedRecipeConfig names


def evaluate(run: Path, problems: list[WordProblem], template: ReasoningTemplate, cfg: PretrainedRecipeConfig,
             examples: int = 4) -> dict:
    """Greedy replies through the chat template with the system prompt: accuracy overall and
    per kind, the exact-format rate, a few examples."""
    model, tok, _ = load_model(run, device=cfg.device)
    model.eval()
    fmt = prompt_format(tok, True, SYSTEM)
    right = {k: 0 for k in KINDS}
    count = {k: 0 for k in KINDS}
    formatted = 0
    shown = []
    with torch.inference_mode():
        for i in range(0, len(problems), cfg.eval_batch):
            chunk = problems[i:i + cfg.eval_batch]
            gen = generate(model, [fmt.prompt_ids(p.question) for p in chunk], cfg.max_new_tokens,
                           DecodeRule(temperature=0.0), fmt.end_id, tok.pad_id)
            for p, ids in zip(chunk, gen.rows(strip_eos=True)):
                text = tok.decode(ids)
                count[p.kind] += 1
                right[p.kind] += reply_answer(text, template) == str(p.answer)
                formatted += template.extract_answer(text) is not None
                if len(shown) < examples:
                    shown.append({"question": p.question, "reply": text, "answer": p.answer})
    n = len(problems)
    return {"accuracy": sum(right.values()) / n, "format_rate": formatted / n,
            "per_kind": {k: right[k] / count[k] for k in KINDS if count[k]}, "n": n, "examples": shown}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def run_pretrained_arithmetic(out: str | Path, cfg: PretrainedRecipeConfig, progress: bool = True,
                              log: Callable[[str], None] = print, resume: bool = False) -> dict:
    from ..interop.importer import import_model
    from ..post.grpo import run_grpo
    from ..post.sft import run_sft
    from .arithmetic import reward_curves

    out = Path(out)
    if resume and not (out.is_dir() and any(out.iterdir())):
        raise SeqlabError(f"{out}: nothing to resume (no earlier recipe run there)")
    if (out / "results.json").exists() and not resume:
        raise SeqlabError(f"{out} already holds a finished recipe; pass --resume or choose another --out")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise SeqlabError(f"{out} is not empty; pass --resume to continue the recipe there or choose another --out")
    previous = {}
    partial = out / "results.json.partial"
    if resume and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text(encoding="utf-8"))["stages"]
    elif resume and partial.exists():
        previous = json.loads(partial.read_text(encoding="utf-8"))["stages"]
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    template = ReasoningTemplate()
    test, dev, train = split(cfg.seed, cfg.n_test, cfg.n_dev, cfg.n_sft + cfg.n_rl)
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    _write_jsonl(d / "sft.jsonl", [sft_row(p, template, cfg.working) for p in train[: cfg.n_sft]])
    _write_jsonl(d / "rl.jsonl", [rl_row(p) for p in train[cfg.n_sft:]])
    _write_jsonl(d / "dev.jsonl", [rl_row(p) for p in dev])
    _write_jsonl(d / "test.jsonl", [rl_row(p) for p in test])
    results: dict = {"config": asdict(cfg), "system": SYSTEM, "stages": {}}

    def kept(stage: str) -> bool:
        if stage in previous and (out / stage / "best.safetensors").exists():
            results["stages"][stage] = previous[stage]
            log(f"  {stage}: kept from the earlier run (test {previous[stage]['test']['accuracy']:.1%})")
            return True
        return False

    def record(stage: str, seconds: float, extra: dict | None = None) -> None:
        row = {"dev": evaluate(out / stage, dev, template, cfg), "test": evaluate(out / stage, test, template, cfg),
               "seconds": round(seconds, 1), **(extra or {})}
        release_freed_memory()  # the evaluations' generation buffers, before the next stage
        results["stages"][stage] = row
        atomic.write_json(partial, results)
        log(f"  {stage}: test accuracy {row['test']['accuracy']:.1%} (dev {row['dev']['accuracy']:.1%}), "
            f"exact format {row['test']['format_rate']:.1%}, {seconds:.0f} s")

    def post(**kw) -> PostConfig:
        base = dict(system=SYSTEM, chat_template=True, lora_rank=cfg.lora_rank, seed=cfg.seed,
                    threads=cfg.threads, max_new_tokens=cfg.max_new_tokens, log_interval=1,
                    device=cfg.device, dtype=cfg.dtype)
        return PostConfig(**{**base, **kw})

    log(f"[1/4] the base model as imported ({cfg.base})")
    t0 = time.perf_counter()
    if not kept("base"):
        if not (out / "base" / "best.safetensors").exists():
            import_model(cfg.base, out / "base")
        record("base", time.perf_counter() - t0)

    log(f"[2/4] SFT priming of the format: {cfg.n_sft} worked examples, {cfg.sft_steps} LoRA updates")
    t0 = time.perf_counter()
    if not kept("sft"):
        import shutil

        shutil.rmtree(out / "sft", ignore_errors=True)  # an interrupted SFT (seconds long) starts again
        run_sft(post(policy=str(out / "base"), data=str(d / "sft.jsonl"), out=str(out / "sft"),
                     steps=cfg.sft_steps, batch_size=8, lr=cfg.sft_lr, micro_batch=cfg.micro_batch),
                progress=progress)
        record("sft", time.perf_counter() - t0)

    log(f"[3/4] GRPO with LoRA for {cfg.rl_minutes:g} min (rewards: {', '.join(REWARDS)})")
    t0 = time.perf_counter()
    if not kept("grpo"):
        going = (out / "grpo" / "checkpoints").exists() and not (out / "grpo" / "best.safetensors").exists()
        g = run_grpo(post(policy=str(out / "sft"), data=str(d / "rl.jsonl"), out=str(out / "grpo"), steps=100000,
                          max_seconds=cfg.rl_minutes * 60, lr=cfg.rl_lr, group_size=cfg.group_size,
                          prompts_per_step=cfg.prompts_per_step, micro_batch=cfg.micro_batch,
                          rewards=list(REWARDS), checkpoint_interval=10,
                          samples_every=5, resume=going), progress=progress)
        record("grpo", time.perf_counter() - t0, {"steps": g["step"]})

    log("[4/4] report")
    s = results["stages"]
    results["grpo_gain_points"] = round(100 * (s["grpo"]["test"]["accuracy"] - s["sft"]["test"]["accuracy"]), 1)
    reward_curves(out, ["grpo"], out / "reward_curve.png", title=f"{cfg.base}: reward during GRPO (LoRA)")
    atomic.write_text(out / "results.md", results_table(results))
    atomic.write_json(out / "results.json", results)
    partial.unlink(missing_ok=True)
    log(results_table(results))
    return {"accuracy": s["grpo"]["test"]["accuracy"], "sft_accuracy": s["sft"]["test"]["accuracy"],
            "base_accuracy": s["base"]["test"]["accuracy"], "grpo_gain_points": results["grpo_gain_points"],
            "stages": {k: {"test": v["test"]["accuracy"], "dev": v["dev"]["accuracy"],
                           "format_rate": v["test"]["format_rate"], "per_kind": v["test"]["per_kind"],
                           "seconds": v["seconds"]} for k, v in s.items()},
            "run": str(out)}


def results_table(results: dict) -> str:
    kinds = [k for k in KINDS]
    lines = ["| stage | test accuracy | " + " | ".join(kinds) + " | exact format | dev accuracy | updates |",
             "|---|---:|" + "---:|" * len(kinds) + "---:|---:|---:|"]
    for stage, r in results["stages"].items():
        t = r["test"]
        per = " | ".join(f"{t['per_kind'].get(k, 0):.1%}" for k in kinds)
        lines.append(f"| {stage} | {t['accuracy']:.1%} | {per} | {t['format_rate']:.1%} | "
                     f"{r['dev']['accuracy']:.1%} | {r.get('steps', '')} |")
    return "\n".join(lines) + "\n"
