"""Shared post-training maths, each function small and tested by hand.

Imports torch (and the sampler's prompt grouping for continuation_logits). Conventions: tensors are (B, T) over completion positions;
`mask` is 1.0 on tokens that count (completion tokens up to and including eos)
and 0.0 elsewhere. Every reduction is safe on an all-zero mask (no NaN).
"""

from __future__ import annotations

import torch


def device_of(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are: the device every tensor fed to it is built on."""
    return next(model.parameters()).device


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(tokens[b, t] | prefix) from logits (B, T, V) aligned with tokens (B, T).

    `temperature` divides the logits first, so the log-probs are those of the
    distribution that sampled at that temperature.
    """
    return _TokenLogprobs.apply(logits, tokens, float(temperature), False)[0]


def token_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor,
                               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """token_logprobs, and the entropy (B, T) of softmax(logits / temperature) at each
    position (not differentiable: a logged statistic), from the same pass over the logits."""
    return _TokenLogprobs.apply(logits, tokens, float(temperature), True)


# rows of the (N, V) logits handled at a time: a float32 block of ~4 MB stays in the cache
# through the passes over it
_BLOCK_FLOATS = 1 << 20


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(x / T)[y] = x_y / T - lse, lse = logsumexp(x / T), and optionally the
    entropy lse - sum_v p_v x_v / T, over blocks of rows in float32; the backward is
    d/dx_v = g (1[v = y] - p_v) / T, p recomputed from the saved lse.

    Why not the plain ops (x.float(), logsumexp, gather, log_softmax for the entropy): at a
    vocabulary of 49,152 each of them is a pass over a (B, T, V) float32 tensor in memory
    (the cast copy, the exp, the zero-filled gather gradient, the softmax of the backward,
    their sum, the cast back), ~11% of a SmolLM2 GRPO micro-batch's forward + backward;
    here each block of rows is read once per direction and stays in the cache. The logits
    (bf16 under autocast) are kept as they are for the backward, not as a float32 copy."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature, with_entropy):
        V = logits.size(-1)
        flat = logits.reshape(-1, V)
        idx = tokens.reshape(-1, 1).clamp(min=0)
        n = flat.size(0)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        picked = torch.empty(n, dtype=torch.float32, device=logits.device)
        entropy = torch.empty(n, dtype=torch.float32, device=logits.device) if with_entropy else None
        rows = max(1, _BLOCK_FLOATS // max(V, 1))
        for a in range(0, n, rows):
            x = flat[a:a + rows].float()
            if temperature != 1.0:
                x = x / temperature
            m = x.amax(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).min)  # finite for all -inf rows
            e = (x - m).exp_()
            total = e.sum(-1, keepdim=True)
            lse[a:a + rows] = (m + total.log()).squeeze(-1)
            picked[a:a + rows] = x.gather(1, idx[a:a + rows]).squeeze(-1)
            if entropy is not None:  # H = lse - sum_v p_v x_v, p = e / total (0 * -inf = 0 where p is 0)
                ex = torch.where(e > 0, e * x, e)
                entropy[a:a + rows] = lse[a:a + rows] - ex.sum(-1) / total.squeeze(-1)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        out = (picked - lse).view(tokens.shape)
        if entropy is None:
            return out, None
        entropy = entropy.view(tokens.shape)
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        logits, tokens, lse = ctx.saved_tensors
        T = ctx.temperature
        V = logits.size(-1)
        flat = logits.reshape(-1, V)
        idx = tokens.reshape(-1, 1).clamp(min=0)
        g = grad_logp.reshape(-1, 1).float()
        if T != 1.0:
            g = g / T
        grad = torch.empty_like(flat)
        rows = max(1, _BLOCK_FLOATS // max(V, 1))
        for a in range(0, flat.size(0), rows):
            x = flat[a:a + rows].float()
            if T != 1.0:
                x = x / T
            p = (x - lse[a:a + rows, None]).exp_()  # softmax(x / T)
            p.mul_(-g[a:a + rows])
            p.scatter_add_(1, idx[a:a + rows], g[a:a + rows])
            grad[a:a + rows] = p
        return grad.view(logits.shape), None, None, None


def sequence_logprobs(model, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs (B, T-1) of input_ids[:, 1:] under `model`, zero outside the mask.

    input_ids (B, T) is <bos> + prompt + completion (+ padding); completion_mask
    (B, T) marks completion tokens. The logits come from SeqModel.logits_at at the
    completion's positions only (the Transformer runs its output layer there only; the
    prompt's and the padding's are never needed), else from the module's forward.
    """
    mask = completion_mask[:, 1:]
    where = mask != 0
    if hasattr(model, "logits_at"):
        logits = model.logits_at(input_ids[:, :-1], where)  # (N, V)
    else:  # any module whose forward gives (logits, _)
        logits = model(input_ids[:, :-1])[0][where]
    lp = token_logprobs(logits.unsqueeze(0), input_ids[:, 1:][where].unsqueeze(0), temperature)[0]
    return lp.new_zeros(where.shape).masked_scatter(where, lp * mask[where].to(lp.dtype))


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
