"""Supervised fine-tuning (SFT): next-token cross-entropy on completion tokens only.

    loss = - sum_{b,t} m_{b,t} log pi(x_{b,t} | x_{b,<t}) / max(sum_{b,t} m_{b,t}, 1)

m marks completion tokens (and the eos); prompt and padding tokens carry no
loss. The token-mean over the whole batch (not a mean of per-sequence means)
weights every completion token equally; a batch with no completion token
gives loss 0, not NaN.
"""

from __future__ import annotations

import torch

from .common import sequence_logprobs


def sft_loss(model, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    logp = sequence_logprobs(model, input_ids, completion_mask)  # (B, T-1), 0 outside the mask
    n_tokens = completion_mask[:, 1:].sum()
    return -logp.sum() / n_tokens.clamp(min=1)
