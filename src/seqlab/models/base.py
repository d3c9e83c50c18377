"""The one model contract every seqlab model follows.

    forward(idx, targets=None, loss_reduction="mean") -> (logits, loss)
        idx (B, T) token ids; logits (B, T, V); targets (B, T) with -1 ignored.
        loss_reduction="none" gives per-token losses (B, T), 0 where ignored:
        pretraining, SFT, PPO, GRPO and DPO all take log-probs from here.
    prefill(idx, lengths, total_len=None) -> (logits (B, V), state)
        Runs right-padded prompts (row b holds lengths[b] real tokens) and
        returns the next-token logits after each row's last real token, plus
        the incremental state (KV cache, hidden state, context window).
        total_len, when given, bounds prompt + generated tokens, so a KV cache
        is sized to what will be used (less memory traffic per step).
    step(tokens (B,), state) -> (logits (B, V), state)
        One new token per row, reusing the state: no recomputation of the prefix.
    select_state(state, index) -> state
        Reorders/repeats rows of a state (beam search, G samples per prompt).
    max_len: the longest total sequence (prompt + generated) the model can hold,
        or None when unbounded (recurrent models).

Because the sampler only uses these four methods, one sampler serves the zoo.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy with targets == -1 ignored.

    "mean" averages over valid targets and is 0 (not NaN) when there are none;
    "sum" sums them; "none" returns (B, T) with zeros at ignored positions.
    """
    flat = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1, reduction="none"
    )
    if reduction == "none":
        return flat.view(targets.shape)
    if reduction == "sum":
        return flat.sum()
    if reduction == "mean":
        return flat.sum() / (targets != -1).sum().clamp(min=1)
    raise ValueError(f"unknown loss_reduction {reduction!r}")


class SeqModel(nn.Module):
    """Base class: subclasses implement `logits`, `prefill`, `step`, `select_state`."""

    max_len: int | None = None
    # whether forward takes packed rows (positions=, starts=; EncodedLines.packed_batch)
    supports_packing: bool = False

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits_at(self, idx: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) at the positions where `where` (B, T, bool) is True, in row-major
        order. A model whose output layer is costly runs it on those positions only."""
        return self.logits(idx)[where]

    def forward(self, idx, targets=None, loss_reduction: str = "mean"):
        logits = self.logits(idx)
        loss = None if targets is None else token_loss(logits, targets, loss_reduction)
        return logits, loss

    def prefill(self, idx: torch.Tensor, lengths: torch.Tensor, total_len: int | None = None):
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state):
        raise NotImplementedError

    def select_state(self, state, index: torch.Tensor):
        raise NotImplementedError

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout rate in `model` to 0: dropout modules (peft's LoRA dropout
    included), the inter-layer dropout of torch RNNs and the attention-probability
    dropout a module keeps as a float `dropout` attribute. Returns how many rates
    were non-zero before."""
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            changed += m.p != 0.0
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):  # nn.RNNBase, CausalSelfAttention
            changed += m.dropout != 0.0
            m.dropout = 0.0
    return changed


def last_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) -> x[b, lengths[b] - 1] for each row b."""
    return x[torch.arange(x.size(0), device=x.device), lengths - 1]
