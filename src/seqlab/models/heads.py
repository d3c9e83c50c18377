"""A sequence in, one vector out: classification and regression on the zoo's backbones.

The backbone (a Transformer, causal or bidirectional, or an RNN/LSTM/GRU, one or two
directions) gives hidden states (B, T, C) through its `encode(x, lengths)`; pooling turns
them into one vector per sequence and a linear layer into class logits or numbers:

    last  the last real position (a causal model's summary of the whole input); for a
          bidirectional RNN the forward half at the last position and the backward half
          at the first, each direction's state after reading everything
    mean  the mean over real positions
    cls   the first position (<bos>), which a bidirectional encoder lets see everything
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SequenceModel(nn.Module):
    def __init__(self, backbone: nn.Module, out_dim: int, pooling: str):
        super().__init__()
        if pooling not in ("last", "mean", "cls"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.head = nn.Linear(backbone.hidden_size, out_dim)

    def pool(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, C) hidden states of rows real up to lengths -> (B, C)."""
        rows = torch.arange(h.size(0), device=h.device)
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "mean":
            real = (torch.arange(h.size(1), device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
            return (h * real[..., None]).sum(1) / lengths[:, None].to(h.dtype)
        last = h[rows, lengths - 1]
        if getattr(self.backbone, "directions", 1) == 2:  # backward direction: done at position 0
            half = h.size(-1) // 2
            return torch.cat([last[:, :half], h[:, 0, half:]], -1)
        return last

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T) token ids or (B, T, d) numbers -> (B, out_dim)."""
        return self.head(self.pool(self.backbone.encode(x, lengths), lengths))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def default_pooling(pooling: str, bidirectional: bool) -> str:
    """'auto': the last position for causal models, the mean for bidirectional ones."""
    if pooling != "auto":
        return pooling
    return "mean" if bidirectional else "last"
