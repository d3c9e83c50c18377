"""Mixture-of-experts feed-forward layer (Switch Transformer, Mixtral).

A router (one linear layer, no bias) scores every token against E experts; each token goes
to its top-k experts and its output is their outputs weighted by the gate. The experts are
the zoo's own MLPs (GeluMLP or SwiGLU), so one expert is exactly the dense layer.

Gate: p = softmax(router(x)) over all E experts; the weights are the top-k entries of p,
renormalised to sum to 1 when k > 1 (Mixtral: the same numbers as a softmax over the top-k
logits) and kept as they are when k = 1 (Switch: a renormalised single weight would be 1
and the router would get no gradient through the output).

Load-balancing loss (Switch Transformer, Fedus et al. 2021, eq. 4):
    aux = E * sum_i f_i * P_i,
f_i the share of the token-to-expert assignments that went to expert i (k per token), P_i
the mean router probability of expert i over the tokens. It is 1 when routing is uniform,
E when one expert takes everything, and its gradient (through P) pushes probability away
from overloaded experts. The Transformer adds coef * aux to its training loss, over real
tokens only (targets != -1), and keeps each layer's expert usage for the metrics.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_balancing_loss(probs: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(aux, assignments per expert) for router probabilities (N, E) and chosen experts (N, k)."""
    n_experts = probs.size(-1)
    counts = torch.bincount(chosen.reshape(-1), minlength=n_experts).to(probs.dtype)
    f = counts / max(chosen.numel(), 1)
    return n_experts * (f * probs.mean(0)).sum(), counts


class MoE(nn.Module):
    def __init__(self, make_expert: Callable[[], nn.Module], dim: int, n_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"moe_top_k must be between 1 and moe_experts ({n_experts}), got {top_k}")
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        self.top_k = top_k
        # (router probabilities (N, E), chosen experts (N, k)) of the last call, for the
        # Transformer's load-balancing loss and usage counts
        self.routing: tuple[torch.Tensor, torch.Tensor] | None = None

    def gate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities (N, E), gate weights (N, k) and chosen experts (N, k) of x (N, C)."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(-1, keepdim=True)
        return probs, weights.to(x.dtype), chosen

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """sum over each token's chosen experts of gate weight * expert(token), x (N, C).

        The N * k assignments are sorted by expert once: one gather of the tokens, each
        expert on its contiguous slice, one scatter-add back (a per-expert gather and scatter
        cost 1.3x more per training step on a CPU, their backward allocating a full-size
        gradient per expert)."""
        probs, weights, chosen = self.gate(x)
        self.routing = (probs, chosen)
        flat = chosen.reshape(-1)  # (N k,) assignment i belongs to token i // k
        order = torch.argsort(flat, stable=True)
        token = order // self.top_k
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        ys = torch.cat([expert(part) for expert, part in zip(self.experts, x[token].split(counts))])
        ys = ys * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, token, ys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x.reshape(-1, x.size(-1))).view_as(x)

    def decode(self, x: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """resid + MoE(x) for the decode loop's 2-D activations (eval: no dropout)."""
        return resid + self.mix(x)
