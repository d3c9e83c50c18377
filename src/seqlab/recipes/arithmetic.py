"""`seqlab recipe arithmetic`: the whole "how to make a chat model" pipeline on
arithmetic word problems, on a CPU, in minutes.

    data      held-out test problems + disjoint training problems (arithmetic_data.py)
    pretrain  a small transformer on arithmetic text ("What is 23 plus 45? 23+45=68")
    SFT       a few hundred worked examples in the reasoning template
    GRPO      format + exact-answer + numeric-distance rewards, a wall-clock budget
    compare   rejection sampling, PPO and DPO (pairs from the SFT model's own right and
              wrong samples) from the same SFT model with the same wall-clock budget

After every stage: exact-match accuracy on the held-out set, greedy decoding (the
answer between the solution tags must equal the true answer as text), and the
fraction of completions in the template's exact format. Everything lands in
OUT/results.json, OUT/results.md and OUT/reward_curve.png.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import atomic
from ..checkpoint import load_model
from ..config import run_config_from_dict
from ..errors import SeqlabError
from ..post.config import PostConfig
from ..post.template import ReasoningTemplate
from ..sampling import DecodeRule, generate
from ..train import train
from .arithmetic_data import pretrain_line, rl_row, sft_row, split_problems

REWARDS = ["format_exact", "answer_exact", "answer_distance"]
COMPARED = ("rejection", "ppo", "dpo")


@dataclass
class ArithmeticConfig:
    seed: int = 0
    digits: int = 2  # operand size of + and - (and of the multi-digit factor of *)
    n_test: int = 400
    n_pretrain: int = 60000
    n_sft: int = 400
    n_rl: int = 20000
    pretrain_steps: int = 3000
    sft_steps: int = 150
    rl_minutes: float = 4.0  # wall-clock budget of each RL algorithm
    compare: list[str] = field(default_factory=lambda: list(COMPARED))
    threads: int = 1
    device: str = "cpu"  # every stage's model: pretraining, post-training, evaluation
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    group_size: int = 8
    prompts_per_step: int = 16
    rl_lr: float = 1e-4


def exact_accuracy(model, tok, rows: list[dict], template: ReasoningTemplate, max_new_tokens: int = 32,
                   batch: int = 256) -> dict:
    """Greedy completions of rows' prompts; exact-match rate of the extracted answer and
    the rate of completions in the template's exact format."""
    model.eval()
    right = formatted = 0
    examples = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            prompts = [tok.encode_prompt(r["prompt"]) for r in chunk]
            gen = generate(model, prompts, max_new_tokens, DecodeRule(temperature=0.0), tok.eos_id, tok.pad_id)
            for r, ids in zip(chunk, gen.rows(strip_eos=True)):
                text = tok.decode(ids)
                answer = template.extract_answer(text)
                formatted += answer is not None
                right += answer == r["answer"]
                if len(examples) < 5:
                    examples.append({"prompt": r["prompt"], "completion": text, "answer": r["answer"]})
    return {"accuracy": right / len(rows), "format_rate": formatted / len(rows), "examples": examples}


def plain_accuracy(model, tok, problems, max_new_tokens: int = 16) -> float:
    """The pretrained model in its own format: prompt "question ", greedy, the number after '='."""
    model.eval()
    right = 0
    with torch.inference_mode():
        prompts = [tok.encode_prompt(p.question + " ") for p in problems]
        gen = generate(model, prompts, max_new_tokens, DecodeRule(temperature=0.0), tok.eos_id, tok.pad_id)
        for p, ids in zip(problems, gen.rows(strip_eos=True)):
            right += tok.decode(ids).rpartition("=")[2].strip() == str(p.answer)
    return right / len(problems)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def make_data(cfg: ArithmeticConfig, out: Path, template: ReasoningTemplate) -> dict[str, Path]:
    test, train_problems = split_problems(cfg.seed, cfg.n_test, cfg.n_pretrain + cfg.n_sft + cfg.n_rl,
                                         cfg.digits)
    pre = train_problems[: cfg.n_pretrain]
    sft = train_problems[cfg.n_pretrain: cfg.n_pretrain + cfg.n_sft]
    rl = train_problems[cfg.n_pretrain + cfg.n_sft:]
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    paths = {"pretrain": d / "pretrain.txt", "sft": d / "sft.jsonl", "rl": d / "rl.jsonl", "test": d / "test.jsonl"}
    # the template's tags appear once in the text so that the tokenizer has them as special tokens
    tags_line = template.prompt("") + template.completion("", "")
    atomic.write_text(paths["pretrain"], "\n".join([*map(pretrain_line, pre), tags_line]) + "\n")
    _write_jsonl(paths["sft"], [sft_row(p, template) for p in sft])
    _write_jsonl(paths["rl"], [rl_row(p, template) for p in rl])
    _write_jsonl(paths["test"], [rl_row(p, template) for p in test])
    return paths, test


def post_config(cfg: ArithmeticConfig, **kw) -> PostConfig:
    base = dict(group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step, max_new_tokens=32,
                rewards=list(REWARDS), seed=cfg.seed, threads=cfg.threads, samples_every=20, log_interval=1,
                device=cfg.device)
    return PostConfig(**{**base, **kw})


def dpo_pairs(policy: Path, rows: list[dict], template: ReasoningTemplate, cfg: ArithmeticConfig,
              n_prompts: int = 512) -> list[dict]:
    """Preference pairs from the model's own samples: a right and a wrong completion of
    the same prompt (prompts where all samples agree give no pair)."""
    model, tok, _ = load_model(policy, device=cfg.device)
    model.eval()
    g = torch.Generator().manual_seed(cfg.seed)
    pairs = []
    with torch.inference_mode():
        for i in range(0, min(n_prompts, len(rows)), 64):
            chunk = rows[i:i + 64]
            prompts = [tok.encode_prompt(r["prompt"]) for r in chunk for _ in range(cfg.group_size)]
            gen = generate(model, prompts, 32, DecodeRule(temperature=1.0), tok.eos_id, tok.pad_id, generator=g)
            texts = [tok.decode(ids) for ids in gen.rows(strip_eos=True)]
            for j, r in enumerate(chunk):
                group = texts[j * cfg.group_size:(j + 1) * cfg.group_size]
                good = [t for t in group if template.extract_answer(t) == r["answer"]]
                bad = [t for t in group if template.extract_answer(t) != r["answer"]]
                if good and bad:
                    pairs.append({"prompt": r["prompt"], "chosen": good[0], "rejected": bad[0]})
    return pairs


def run_arithmetic(out: str | Path, cfg: ArithmeticConfig | None = None, progress: bool = True,
                   log: Callable[[str], None] = print, resume: bool = False) -> dict:
    """The whole recipe into `out`. resume: keep every stage an earlier run of this
    directory finished (its record in results.json[.partial] and its run), and run
    the others; a stage interrupted midway starts again."""
    from ..post.data import load_jsonl
    from ..post.dpo import run_dpo
    from ..post.grpo import run_grpo
    from ..post.ppo import run_ppo
    from ..post.rejection import run_rejection
    from ..post.sft import run_sft

    cfg = cfg or ArithmeticConfig()
    unknown = set(cfg.compare) - set(COMPARED)
    if unknown:
        raise SeqlabError(f"recipe arithmetic: unknown algorithm(s) {sorted(unknown)} to compare "
                          f"(choose from {', '.join(COMPARED)})")
    out = Path(out)
    if resume and not (out.is_dir() and any(out.iterdir())):
        raise SeqlabError(f"{out}: nothing to resume (no earlier recipe run there)")
    if (out / "results.json").exists() and not resume:
        raise SeqlabError(f"{out} already holds a finished recipe; pass --resume or choose another --out")
    previous: dict = {}
    for name in ("results.json", "results.json.partial"):
        if resume and (out / name).exists():
            previous = json.loads((out / name).read_text(encoding="utf-8"))["stages"]
            break
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    template = ReasoningTemplate()
    paths, test_problems = make_data(cfg, out, template)
    test_rows = load_jsonl(paths["test"], ("prompt", "answer"))
    results: dict = {"config": asdict(cfg), "stages": {}}

    def kept(stage: str) -> bool:
        """resume: reuse a finished stage; clear an interrupted one."""
        if stage in previous and (out / stage / "best.safetensors").exists():
            results["stages"][stage] = previous[stage]
            log(f"  {stage}: kept from the earlier run ({previous[stage]['accuracy']:.1%})")
            return True
        if resume and (out / stage).exists():
            shutil.rmtree(out / stage)
        return False

    def record(stage: str, run: Path, seconds: float, extra: dict | None = None) -> dict:
        model, tok, _ = load_model(run, device=cfg.device)
        acc = exact_accuracy(model, tok, test_rows, template)
        row = {"accuracy": acc["accuracy"], "format_rate": acc["format_rate"], "seconds": round(seconds, 1),
               "examples": acc["examples"], **(extra or {})}
        results["stages"][stage] = row
        atomic.write_json(out / "results.json.partial", results)
        log(f"  {stage}: held-out exact accuracy {acc['accuracy']:.1%} (format {acc['format_rate']:.1%}), "
            f"{seconds:.0f} s")
        return row

    log(f"[1/5] pretraining a {cfg.n_layer}-layer transformer on {cfg.n_pretrain} arithmetic lines")
    t0 = time.perf_counter()
    pre_cfg = None if kept("pretrain") else run_config_from_dict({
        "data": {"path": str(paths["pretrain"]), "specials": template.tags},
        "model": {"type": "transformer", "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
                  "block_size": 64, "dropout": 0.0},
        "train": {"steps": cfg.pretrain_steps, "batch_size": 64, "lr": 2e-3, "eval_interval": 500,
                  "checkpoint_interval": 1000, "seed": cfg.seed, "threads": cfg.threads, "warmup_steps": 100,
                  "device": cfg.device},
    })
    if pre_cfg is not None:
        train(pre_cfg, out / "pretrain", progress=progress)
        model, tok, _ = load_model(out / "pretrain", device=cfg.device)
        plain = plain_accuracy(model, tok, test_problems)
        log(f"  pretrain: held-out exact accuracy in its own format (\"question a+b=\") {plain:.1%}")
        record("pretrain", out / "pretrain", time.perf_counter() - t0, {"plain_text_accuracy": plain})

    log(f"[2/5] SFT on {cfg.n_sft} worked examples in the reasoning template")
    t0 = time.perf_counter()
    if not kept("sft"):
        run_sft(post_config(cfg, policy=str(out / "pretrain"), data=str(paths["sft"]), out=str(out / "sft"),
                            steps=cfg.sft_steps, batch_size=32, lr=1e-3, warmup_steps=10), progress=progress)
        record("sft", out / "sft", time.perf_counter() - t0)
    sft = results["stages"]["sft"]

    budget = cfg.rl_minutes * 60
    log(f"[3/5] GRPO for {cfg.rl_minutes:g} min (rewards: {', '.join(REWARDS)})")
    t0 = time.perf_counter()
    rl = dict(policy=str(out / "sft"), data=str(paths["rl"]), steps=100000, max_seconds=budget, lr=cfg.rl_lr)
    if not kept("grpo"):
        g = run_grpo(post_config(cfg, out=str(out / "grpo"), **rl), progress=progress)
        record("grpo", out / "grpo", time.perf_counter() - t0, {"steps": g["step"]})

    log(f"[4/5] comparison from the same SFT model, {cfg.rl_minutes:g} min each: {', '.join(cfg.compare)}")
    for alg in cfg.compare:
        t0 = time.perf_counter()
        if kept(alg):
            continue
        if alg == "rejection":
            # rounds of 256 prompts x G samples; the ~10-30% right ones (reward >= 7 of 8) are
            # trained on for 10 updates of 32 (about 1-2 epochs: more overfits the few kept
            # samples and the policy collapses, measured)
            r = run_rejection(post_config(cfg, out=str(out / alg), **rl, rounds=10000, round_prompts=256,
                                          reward_threshold=7.0, batch_size=32),
                              progress=progress)
        elif alg == "ppo":
            r = run_ppo(post_config(cfg, out=str(out / alg), **rl, batch_size=cfg.group_size * cfg.prompts_per_step,
                                    ppo_epochs=2, minibatches=2, kl_beta=0.0), progress=progress)
        else:
            rows = load_jsonl(paths["rl"], ("prompt", "answer"))
            pairs = dpo_pairs(out / "sft", rows, template, cfg, n_prompts=2048)
            _write_jsonl(out / "data" / "dpo_pairs.jsonl", pairs)
            if not pairs:
                results.setdefault("notes", []).append("dpo skipped: the SFT model's samples gave no right/wrong pair")
                log("  dpo: skipped (no right/wrong pair among the SFT model's samples)")
                continue
            left = max(1.0, budget - (time.perf_counter() - t0))
            # two epochs over the pairs, within the budget: training DPO on a few hundred
            # pairs for the whole budget (~150 epochs) drove the chosen log-probs down with
            # the rejected ones (likelihood displacement) and the policy collapsed (measured)
            epochs2 = max(1, math.ceil(2 * len(pairs) / 32))
            r = run_dpo(post_config(cfg, policy=str(out / "sft"), data=str(out / "data" / "dpo_pairs.jsonl"),
                                    out=str(out / alg), steps=epochs2, max_seconds=left, batch_size=32, lr=3e-5,
                                    beta=0.1), progress=progress)
            r["pairs"] = len(pairs)
        record(alg, out / alg, time.perf_counter() - t0, {"steps": r["step"], **({"pairs": r["pairs"]} if "pairs" in r else {})})

    log("[5/5] report")
    results["grpo_gain_points"] = round(100 * (results["stages"]["grpo"]["accuracy"] - sft["accuracy"]), 1)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    reward_curves(out, ["grpo", *cfg.compare], out / "reward_curve.png")
    atomic.write_text(out / "results.md", results_table(results))
    atomic.write_json(out / "results.json", results)
    (out / "results.json.partial").unlink(missing_ok=True)
    log(results_table(results))
    return {"accuracy": results["stages"]["grpo"]["accuracy"], "sft_accuracy": sft["accuracy"],
            "grpo_gain_points": results["grpo_gain_points"],
            "stages": {k: {kk: v[kk] for kk in ("accuracy", "format_rate", "seconds")}
                       for k, v in results["stages"].items()},
            "seconds": results["seconds"], "run": str(out)}


def results_table(results: dict) -> str:
    lines = ["| stage | held-out exact accuracy | exact format | wall time (s) | updates |",
             "|---|---:|---:|---:|---:|"]
    for stage, r in results["stages"].items():
        lines.append(f"| {stage} | {r['accuracy']:.1%} | {r['format_rate']:.1%} | {r['seconds']:.0f} | "
                     f"{r.get('steps', '')} |")
    return "\n".join(lines) + "\n"


def reward_curves(out: Path, runs: list[str], path: Path,
                  title: str = "arithmetic: reward during RL (format + answer + distance)") -> None:
    """Mean reward per update against wall-clock seconds, one line per algorithm (the
    reward each algorithm logs: its rollout reward; DPO logs none and is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..metrics import read_metrics

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in runs:
        f = out / name / "metrics.csv"
        if not f.exists():
            continue
        rows = [r for r in read_metrics(f) if r.get("reward") not in ("", None)]
        if rows:
            ax.plot([float(r["elapsed_s"]) for r in rows], [float(r["reward"]) for r in rows], label=name, lw=1)
    ax.set_xlabel("wall-clock seconds of RL")
    ax.set_ylabel("mean reward of the rollout")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
