"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath), with the
loss aggregations of its successors:

    A_i   = (r_i - mean_group(r)) / (std_group(r) + eps)     (scale="none": no division, Dr. GRPO)
    rho   = exp(logp - logp_old)                              (token level)
    L_t   = - min(rho A_i, clip(rho, 1 - epsilon, 1 + epsilon_high) A_i)
            + beta * k3(logp, logp_ref)                       (beta = 0: no reference model kept)
    aggregation:
      grpo     mean_i [ sum_t m L / max(n_i, 1) ]             (per-sequence mean; the paper's)
      bnpo     sum_{i,t} m L / max(sum m, 1)                  (token mean over the batch)
      dapo     same as bnpo here (one process: the global token mean; Yu et al. 2025)
      dr_grpo  sum_{i,t} m L / (B * max_completion_length)   (constant normaliser; Liu et al. 2025)

logp_old are the log-probs of the policy that sampled, stored at rollout time,
so num_iterations > 1 reuses rollouts correctly. They must be log-probs of the
distribution that actually drew the tokens: sampling with temperature T means
logp is computed at temperature T too; top-k/top-p/min-p truncation is refused
by the trainer (the truncated distribution is not the policy being optimised).
With one iteration and no KL, the loss value is ~0 at every step (rho = 1 and
advantages are centred per group): its gradient is a group-baseline REINFORCE.
"""

from __future__ import annotations

import torch

from .common import kl_estimate

AGGREGATIONS = ("grpo", "bnpo", "dapo", "dr_grpo")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
              ref_logp: torch.Tensor | None = None, loss_type: str = "dapo",
              max_completion_length: int | None = None) -> tuple[torch.Tensor, dict]:
    """logp/old_logp/ref_logp/mask: (B, T) over completion tokens; advantages: (B,)."""
    eps_hi = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)
    A = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - epsilon, 1 + eps_hi)
    per_token = -torch.min(ratio * A, clipped * A)
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs reference log-probs")
        kl = kl_estimate(logp, ref_logp, "k3")
        per_token = per_token + beta * kl
    n_i = mask.sum(1)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / n_i.clamp(min=1)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        T = max_completion_length or mask.size(1)
        loss = (per_token * mask).sum() / (mask.size(0) * T)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r} (one of {', '.join(AGGREGATIONS)})")
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        low = ((ratio < 1 - epsilon) & (A < 0)).to(mask.dtype)
        high = ((ratio > 1 + eps_hi) & (A > 0)).to(mask.dtype)
        stats = {"clip_low": ((low * mask).sum() / n).item(), "clip_high": ((high * mask).sum() / n).item(),
                 "kl": ((kl * mask).sum() / n).item() if kl is not None else 0.0}
    return loss, stats
