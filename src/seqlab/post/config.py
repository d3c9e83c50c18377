"""Typed config for `seqlab post ALGORITHM --config cfg.toml` (table [post]).

One flat table; unknown keys and wrong types fail naming the key (the same
checker as the training config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..config import load_toml, naming_the_file, section_from_dict
from ..errors import SeqlabError


@dataclass
class PostConfig:
    policy: str = ""  # run directory of the starting model
    data: str = ""  # JSONL file
    out: str = ""
    steps: int = 100
    max_seconds: float = 0.0  # wall-clock budget: stop after the update that crosses it (0 = none)
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0  # 1.0: constant after warmup; < 1: cosine decay to that fraction
    grad_clip: float = 1.0
    seed: int = 0
    log_interval: int = 1
    checkpoint_interval: int = 50  # updates between checkpoints (rounded up to the algorithm's rollout period)
    resume: bool = False  # continue the run in `out` from its last checkpoint (CLI: --resume)
    threads: int = 0
    device: str = "cpu"  # cpu, cuda, cuda:N or mps (CLI: --device); under torchrun `cuda` is each rank's GPU
    # Precision of the forward passes. float32 by default on every device; "bfloat16" is bf16
    # autocast (on a CPU with bf16 instructions training's matmuls run 2.2-2.7x faster, and
    # sampling runs the native step with bf16 weights), "auto" bf16 where a GPU supports it.
    # RL ratios: with one update per rollout (num_iterations = 1) GRPO's old log-probs are the
    # trainer's own, so the ratio is exactly 1 in any precision; with more, the sampler's
    # log-probs are compared with the trainer's and bf16 rounding alone moves the ratio
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    # Dropout off while post-training (lora_dropout included). Unset: off for grpo and ppo
    # (the policy being updated must be the one that sampled), dpo (the one the reference
    # log-probs came from) and rm (its scores are used without dropout); sft and rejection
    # sampling (plain supervised fine-tuning) keep the model's dropout
    disable_dropout: Optional[bool] = None
    # LoRA (peft) on the transformer's linear layers; 0 = full fine-tuning
    lora_rank: int = 0
    lora_alpha: Optional[float] = None  # default 2 x lora_rank
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc", "gate_up"])
    # at the end: merge the adapter into the weights (an ordinary run; a quantized base becomes
    # float), or keep base + adapter apart (a quantized base stays quantized; see models/lora.py).
    # Unset: merge on a float base, keep apart on a quantized one (QLoRA)
    lora_merge: Optional[bool] = None
    # rejection sampling
    rounds: int = 3  # sampling rounds; steps are split evenly between them
    round_prompts: int = 0  # prompts drawn (each sampled group_size times) per round; 0 = all
    reward_threshold: float = 0.0  # keep completions with reward >= this
    # PPO
    ppo_epochs: int = 2
    minibatches: int = 2
    vf_coef: float = 0.5
    vf_clip: float = 0.2
    gamma: float = 1.0
    gae_lambda: float = 0.95
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_in_reward: bool = True  # False: add kl_beta * KL to the loss instead
    whiten_advantages: bool = True
    reward_model: str = ""  # run directory written by `seqlab post rm`; empty: use `rewards`
    # reward model
    margin: float = 0.0
    val_fraction: float = 0.1
    # DPO
    beta: float = 0.1
    dpo_loss: Literal["sigmoid", "ipo"] = "sigmoid"
    # GRPO
    group_size: int = 8
    prompts_per_step: int = 4
    max_new_tokens: int = 32
    # rows per forward + backward in an update (gradient accumulation; 0: the whole batch), in
    # GRPO and wherever SFT's loss trains (sft, rejection, off-policy distil). Bounds memory on
    # pretrained models: activations grow with rows x length x layers.
    micro_batch: int = 0
    temperature: float = 1.0
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None
    kl_beta: float = 0.0
    loss_type: Literal["grpo", "bnpo", "dapo", "dr_grpo"] = "dapo"
    advantage_scale: Literal["group", "batch", "none"] = "group"
    num_iterations: int = 1
    rewards: list[str] = field(default_factory=list)
    reward_weights: Optional[list[float]] = None
    samples_every: int = 10  # write prompts/completions/rewards to samples.jsonl every K steps
    # prompts: through the policy's chat template (None: when its tokenizer has one; see prompting.py)
    chat_template: Optional[bool] = None
    system: str = ""  # chat: the system message (e.g. the reasoning-format instructions)
    # distillation (post distill): the teacher run, the mode, the on-policy divergence
    teacher: str = ""
    mode: Literal["onpolicy", "offpolicy"] = "onpolicy"
    divergence: Literal["forward", "reverse", "jsd"] = "forward"
    jsd_beta: float = 0.5  # divergence = "jsd": the mixture weight of the teacher (GKD's beta)
    # reasoning template
    reasoning_start: str = "<start_working_out>"
    reasoning_end: str = "<end_working_out>"
    solution_start: str = "<SOLUTION>"
    solution_end: str = "</SOLUTION>"


def load_post_config(path: str | None, overrides: dict) -> PostConfig:
    data = load_toml(path) if path else {}
    unknown = set(data) - {"post"}
    if unknown:
        raise SeqlabError(f"{path}: unknown table(s) {', '.join(sorted(unknown))} (post-training reads [post])")
    return naming_the_file(path, data, {"post": overrides}, lambda: _checked(data.get("post", {}), overrides))


def _checked(section: dict, overrides: dict) -> PostConfig:
    cfg = section_from_dict(PostConfig, {**section, **overrides}, prefix="post")
    for key in ("policy", "data", "out"):
        if not getattr(cfg, key):
            raise SeqlabError(f"config key 'post.{key}' is required")
    if cfg.lora_rank < 0:
        raise SeqlabError("config key 'post.lora_rank': must be >= 0 (0 = full fine-tuning)")
    if cfg.micro_batch < 0:
        raise SeqlabError("config key 'post.micro_batch': must be >= 0 (0 = the whole batch at once)")
    for key in ("steps", "batch_size", "group_size", "prompts_per_step", "max_new_tokens", "num_iterations", "lr"):
        if getattr(cfg, key) <= 0:
            raise SeqlabError(f"config key 'post.{key}': must be positive")
    return cfg
