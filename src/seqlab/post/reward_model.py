"""Reward model: a scalar head on any seqlab model, trained with the
Bradley-Terry pairwise loss (Ouyang et al. 2022; TRL's RewardTrainer):

    loss = - mean log sigmoid(r(x, y_w) - r(x, y_l) - margin)

The score of a sequence is the head's output at its last real token (the eos).
Held-out pair accuracy = fraction of pairs with r(x, y_w) > r(x, y_l).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


# The output layer's bias adds the same vector to the features of chosen and
# rejected sequences, so it cancels in r_w - r_l: its gradient is exactly 0.
# It is frozen rather than left as a "trainable" parameter that cannot train.
FROZEN = ("lm_head.bias",)


class ScalarHead(nn.Module):
    """Wraps a seqlab model: hidden features come from its logits (B, T, V) through one
    linear layer, so any model in the zoo works without knowing its internals."""

    def __init__(self, body: nn.Module, vocab_size: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(vocab_size, 1)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        logits, _ = self.body(input_ids)
        last = logits[torch.arange(input_ids.size(0), device=input_ids.device), lengths - 1]
        return self.head(last.float()).squeeze(-1)


def run_reward_model(cfg, progress: bool = True) -> dict:
    """Train a scalar reward head on the policy's architecture from preference pairs."""
    from safetensors.torch import save_model

    from .. import atomic
    from ..engine import ranks as process_ranks
    from ..engine import weighted_sum
    from .common import device_of
    from .data import load_jsonl, pad_batch
    from .prompting import prompt_format
    from .runner import load_policy, optimise, prepare_out

    body, tok, _ = load_policy(cfg, drop_dropout=True)
    for name, p in body.named_parameters():
        if name in FROZEN:
            p.requires_grad_(False)
    rows = load_jsonl(cfg.data, ("prompt", "chosen", "rejected"), tok)
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(rows), generator=g).tolist()
    n_val = max(1, int(len(rows) * cfg.val_fraction)) if len(rows) > 1 else 0
    val_idx, train_idx = perm[:n_val], perm[n_val:] or perm
    fmt = prompt_format(tok, cfg.chat_template, cfg.system)
    enc = [(fmt.pair(r["prompt"], r["chosen"], body.max_len),
            fmt.pair(r["prompt"], r["rejected"], body.max_len), float(r.get("margin", cfg.margin)))
           for r in rows]
    device = device_of(body)
    model = ScalarHead(body, body.vocab_size).to(device)
    out = prepare_out(cfg, "rm")
    ranks = process_ranks()
    mine = ranks.shard(cfg.batch_size, "post.batch_size")

    def scores(items):
        ids_w, _ = pad_batch([c for c, _, _ in items], tok.pad_id, device)
        ids_l, _ = pad_batch([r for _, r, _ in items], tok.pad_id, device)
        len_w = torch.tensor([len(c[0]) for c, _, _ in items], device=device)
        len_l = torch.tensor([len(r[0]) for _, r, _ in items], device=device)
        return model(ids_w, len_w), model(ids_l, len_l), torch.tensor([m for _, _, m in items], device=device)

    def accuracy(idx) -> float:
        if not idx:
            return float("nan")
        model.eval()
        with torch.no_grad():
            rw, rl, _ = scores([enc[i] for i in idx])
        model.train()
        return (rw > rl).float().mean().item()

    def step_fn(step):
        pick = [train_idx[i] for i in torch.randint(len(train_idx), (cfg.batch_size,), generator=g).tolist()]
        rw, rl, margin = scores([enc[i] for i in pick[mine]])  # data-parallel: this rank's pairs
        # a mean over equal shards is the mean of the ranks' means
        stats = weighted_sum({"train_accuracy": (rw > rl).float().mean().item()}, 1.0 / ranks.world, ranks)
        if (step + 1) % max(1, cfg.steps // 10) == 0 or step + 1 == cfg.steps:
            stats["val_accuracy"] = accuracy(val_idx)  # the same numbers on every rank
        return bradley_terry_loss(rw, rl, margin) / ranks.world, stats

    stats = optimise(body, cfg, out, ["loss", "train_accuracy", "val_accuracy"], step_fn, progress,
                     "reward model (Bradley-Terry)", ("loss", "val_accuracy"), trained=model,
                     generator=g)
    if ranks.main:
        with atomic.atomic_path(out / "reward_head.safetensors") as tmp:
            save_model(model.head, str(tmp))
    return {"algorithm": "rm", "step": stats["steps_done"], "loss": stats["loss"], "accuracy": accuracy(val_idx),
            "train_accuracy": stats["train_accuracy"], "run": str(out)}


def load_reward_model(run_dir: str) -> ScalarHead:
    from pathlib import Path

    from safetensors.torch import load_model as st_load

    from ..checkpoint import load_model
    from ..errors import SeqlabError

    head_path = Path(run_dir) / "reward_head.safetensors"
    if not head_path.exists():
        raise SeqlabError(f"{run_dir}: not a reward model run (no reward_head.safetensors; train one with "
                          f"`seqlab post rm`)")
    body, tok, _ = load_model(run_dir, "best")
    rm = ScalarHead(body, body.vocab_size)
    st_load(rm.head, str(head_path))
    return rm.eval()
