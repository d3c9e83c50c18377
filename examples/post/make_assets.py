"""Make the small files the examples in this folder run on (already committed; rerun
to regenerate, about 2 minutes on one CPU core):

    data/sft.jsonl    worked arithmetic examples in the reasoning template (prompt/completion)
    data/rl.jsonl     prompts with an `answer` column, for rejection sampling, PPO and GRPO
    data/pref.jsonl   prompt/chosen/rejected pairs: the SFT model's own right and wrong samples
    models/pretrained a 2-layer transformer pretrained on arithmetic text (the SFT example's start)
    models/sft        that model after SFT (the start of every other example)

Usage, from the repository root:  python examples/post/make_assets.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from seqlab.config import run_config_from_dict
from seqlab.post.sft import run_sft
from seqlab.post.template import ReasoningTemplate
from seqlab.recipes.arithmetic import ArithmeticConfig, dpo_pairs, make_data, post_config
from seqlab.train import train

HERE = Path(__file__).resolve().parent
KEEP = ("config.json", "tokenizer.json", "best.safetensors", "best.json")


def ship(run: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        shutil.copyfile(run / name, dest / name)


def main() -> None:
    torch.set_num_threads(1)
    work = HERE / "_build"
    shutil.rmtree(work, ignore_errors=True)
    cfg = ArithmeticConfig(seed=7, n_test=10, n_pretrain=40000, n_sft=300, n_rl=2000, threads=1)
    template = ReasoningTemplate()
    paths, _ = make_data(cfg, work, template)
    pre = run_config_from_dict({
        "data": {"path": str(paths["pretrain"]), "specials": template.tags},
        "model": {"type": "transformer", "n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "dropout": 0.0},
        "train": {"steps": 2000, "batch_size": 64, "lr": 2e-3, "eval_interval": 500, "seed": 7, "threads": 1},
    })
    train(pre, work / "pretrained", progress=False)
    run_sft(post_config(cfg, policy=str(work / "pretrained"), data=str(paths["sft"]), out=str(work / "sft"),
                        steps=150, batch_size=32, lr=1e-3, warmup_steps=10), progress=False)
    rl_rows = [json.loads(x) for x in paths["rl"].read_text().splitlines()]
    pairs = dpo_pairs(work / "sft", rl_rows, template, cfg, n_prompts=1024)
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    shutil.copyfile(paths["sft"], data / "sft.jsonl")
    shutil.copyfile(paths["rl"], data / "rl.jsonl")
    (data / "pref.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    ship(work / "pretrained", HERE / "models" / "pretrained")
    ship(work / "sft", HERE / "models" / "sft")
    shutil.rmtree(work)
    print(f"wrote {data} ({len(pairs)} preference pairs) and {HERE / 'models'}")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            epilog="It takes no options; it rewrites the files listed above.").parse_args()
    main()
