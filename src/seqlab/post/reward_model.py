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
