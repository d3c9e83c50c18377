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

from ..errors import SeqlabError

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


def _sequence_scores(model, ids, mask, mean: bool) -> torch.Tensor:
    from .common import sequence_logprobs

    lp = sequence_logprobs(model, ids, mask)
    total = lp.sum(1)
    return total / mask[:, 1:].sum(1).clamp(min=1) if mean else total


def run_dpo(cfg, progress: bool = True) -> dict:
    """DPO/IPO on {"prompt", "chosen", "rejected"} JSONL."""
    from ..engine import ranks as process_ranks
    from ..engine import weighted_sum
    from .common import device_of
    from .data import load_jsonl, pad_batch
    from .prompting import prompt_format
    from .runner import load_policy, optimise, prepare_out

    if cfg.beta <= 0:  # beta = 0 divides by zero in IPO; beta < 0 prefers the rejected answers
        raise SeqlabError(f"config key 'post.beta': must be > 0, got {cfg.beta}")
    model, tok, _ = load_policy(cfg, drop_dropout=True)
    device = device_of(model)
    rows = load_jsonl(cfg.data, ("prompt", "chosen", "rejected"), tok)
    fmt = prompt_format(tok, cfg.chat_template, cfg.system)
    chosen = [fmt.pair(r["prompt"], r["chosen"], model.max_len) for r in rows]
    rejected = [fmt.pair(r["prompt"], r["rejected"], model.max_len) for r in rows]
    mean = cfg.dpo_loss == "ipo"
    # reference log-probs once, from the frozen starting model
    model.eval()
    with torch.no_grad():
        ref_c = torch.cat([_sequence_scores(model, *pad_batch(chosen[i:i + 64], tok.pad_id, device), mean)
                           for i in range(0, len(rows), 64)])
        ref_r = torch.cat([_sequence_scores(model, *pad_batch(rejected[i:i + 64], tok.pad_id, device), mean)
                           for i in range(0, len(rows), 64)])
    out = prepare_out(cfg, "dpo")
    g = torch.Generator().manual_seed(cfg.seed)
    ranks = process_ranks()
    mine = ranks.shard(cfg.batch_size, "post.batch_size")

    def step_fn(step):
        idx = torch.randint(len(rows), (cfg.batch_size,), generator=g)[mine].to(device)  # this rank's pairs
        pc = _sequence_scores(model, *pad_batch([chosen[i] for i in idx.tolist()], tok.pad_id, device), mean)
        pr = _sequence_scores(model, *pad_batch([rejected[i] for i in idx.tolist()], tok.pad_id, device), mean)
        loss, stats = dpo_loss(pc, pr, ref_c[idx], ref_r[idx], cfg.beta, cfg.dpo_loss)
        # data-parallel: a mean over equal shards is the mean of the ranks' means
        return loss / ranks.world, weighted_sum(stats, 1.0 / ranks.world, ranks)

    stats = optimise(model, cfg, out, ["loss", "accuracy", "margin", "reward_chosen", "reward_rejected"],
                     step_fn, progress, f"DPO ({cfg.dpo_loss})", ("loss", "accuracy"), generator=g)
    return {"algorithm": "dpo", "step": stats["steps_done"], **stats, "run": str(out)}
