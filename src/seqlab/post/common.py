"""Shared post-training maths, each function small and tested by hand.

Imports torch (and the sampler's prompt grouping for continuation_logits). Conventions: tensors are (B, T) over completion positions;
`mask` is 1.0 on tokens that count (completion tokens up to and including eos)
and 0.0 elsewhere. Every reduction is safe on an all-zero mask (no NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def device_of(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are: the device every tensor fed to it is built on."""
    return next(model.parameters()).device


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(tokens[b, t] | prefix) from logits (B, T, V) aligned with tokens (B, T).

    `temperature` divides the logits first, so the log-probs are those of the
    distribution that sampled at that temperature.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    # log_softmax(x)[y] = x[y] - logsumexp(x): avoids materialising (B, T, V) log-probs twice
    return logits.gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def sequence_logprobs(model, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs (B, T-1) of input_ids[:, 1:] under `model`, zero outside the mask.

    input_ids (B, T) is <bos> + prompt + completion (+ padding); completion_mask
    (B, T) marks completion tokens. Uses the model's ordinary forward, so every
    model in the zoo works.
    """
    logits, _ = model(input_ids[:, :-1])
    lp = token_logprobs(logits, input_ids[:, 1:], temperature)
    return lp * completion_mask[:, 1:].to(lp.dtype)


def continuation_logits(model, prompts: list[list[int]], completions: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Logits (B, L, V) for completions (B, L) after each row's prompt: [b, t] predicts
    completions[b, t]. A model with `continuation_logits` (the Transformer) runs each
    distinct prompt once for all the rows that share it; others run each whole sequence."""
    from ..sampling import distinct_prompts  # the sampler's own grouping of shared prompts

    device = completions.device
    distinct, row_of = distinct_prompts(prompts)
    rows = torch.tensor(row_of, device=device)
    plen = torch.tensor([len(p) for p in distinct], device=device)
    if hasattr(model, "continuation_logits"):
        width = int(plen.max())
        prefix = torch.tensor([p + [pad_id] * (width - len(p)) for p in distinct], dtype=torch.long, device=device)
        return model.continuation_logits(prefix, plen, rows, completions)
    B, L = completions.shape
    lens = plen[rows]
    width = int(lens.max()) + L
    ids = torch.tensor([p + [pad_id] * (width - len(p)) for p in prompts], dtype=torch.long, device=device)
    slot = lens[:, None] + torch.arange(L, device=device)
    ids.scatter_(1, slot, completions)
    logits, _ = model(ids[:, :-1])
    return logits.gather(1, (slot - 1).unsqueeze(-1).expand(B, L, logits.size(-1)))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of x where mask is 1; 0 (not NaN) where the mask is empty."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries (population variance); mean kept if not shift_mean."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman 2020).

    k1 = logp - ref_logp (unbiased, can be negative);
    k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 (unbiased, always >= 0).
    """
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        d = ref_logp - logp
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown KL estimator {kind!r} (k1 or k3)")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016) over (B, T).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};
    V and A past the last valid token are 0. Returns (advantages, returns = A + V).
    """
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    mask = mask.to(rewards.dtype)
    for t in reversed(range(T)):  # T is a completion length: a short Python loop of vector ops
        next_v = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages for rewards (N,) laid out as N/group_size consecutive groups.

    A = r - mean(group); then divided by (std + eps) with scale="group" (sample
    std, Bessel-corrected, as in TRL), by the batch std with scale="batch", or
    not at all with scale="none" (Dr. GRPO). A group whose rewards are all equal
    gets advantage 0 for every member.
    """
    r = rewards.view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred.reshape(-1)
    if scale == "group":
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        return (centred / (std + eps)).reshape(-1)
    if scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros((), device=rewards.device)
        return (centred / (std + eps)).reshape(-1)
    raise ValueError(f"unknown advantage scale {scale!r} (group, batch or none)")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy (B, T) of softmax(logits)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
