"""Direct Preference Optimization (Rafailov et al. 2023), with IPO (Azar et al. 2023) as an option.

Sequence log-probs are sums over completion tokens (no length normalisation)
for DPO; IPO uses per-token means, as TRL does (confirmed with the IPO authors).

    h_w = log pi(y_w|x) - log pi_ref(y_w|x),   h_l = log pi(y_l|x) - log pi_ref(y_l|x)
    DPO (sigmoid):  loss = - mean log sigmoid(beta * (h_w - h_l))
    IPO:            loss = mean ((h_w - h_l) - 1 / (2 beta))^2

Reference log-probs are computed once, before training, from the frozen
starting model (no reference copy is kept in memory during training).
Logged: chosen/rejected implicit rewards beta*h, accuracy (beta*h_w > beta*h_l), margin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss_type: str = "sigmoid") -> tuple[torch.Tensor, dict]:
    """Inputs are per-sequence log-probs (B,): sums for 'sigmoid', token means for 'ipo'."""
    h_w = policy_chosen - ref_chosen
    h_l = policy_rejected - ref_rejected
    delta = h_w - h_l
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * delta).mean()
    elif loss_type == "ipo":
        loss = ((delta - 1.0 / (2.0 * beta)) ** 2).mean()
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r} (sigmoid or ipo)")
    r_w, r_l = (beta * h_w).detach(), (beta * h_l).detach()
    stats = {"reward_chosen": r_w.mean().item(), "reward_rejected": r_l.mean().item(),
             "accuracy": (r_w > r_l).float().mean().item(), "margin": (r_w - r_l).mean().item()}
    return loss, stats
