"""Proximal Policy Optimization for sequence models (Schulman et al. 2017; the
RLHF form of Ouyang et al. 2022 / TRL's PPOTrainer), with rewards from reward
functions or from a reward model.

Rollout: sample one completion per prompt; score it (a sequence-level reward s).
Per-token rewards, KL in the reward (kl_in_reward = true):
    r_t = - kl_beta * KL_t            KL_t = k1: logp_old - logp_ref,  k3: exp(d) - d - 1, d = ref - old
    r_T += s                          (at the completion's last token)
GAE over completion tokens with a value model V (the policy's architecture,
its own weights, a linear head on its output):
    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lambda A_{t+1},   R_t = A_t + V_t
Advantages are whitened over valid tokens (whiten_advantages). For ppo_epochs
epochs over `minibatches` shuffled minibatches:
    rho     = exp(logp - logp_old)
    pg_loss = masked_mean( max(-A rho, -A clip(rho, 1 - epsilon, 1 + epsilon)) )
    V_clip  = V_old + clip(V - V_old, -vf_clip, vf_clip)
    vf_loss = 1/2 masked_mean( max((V - R)^2, (V_clip - R)^2) )
    loss    = pg_loss + vf_coef vf_loss  (+ kl_beta masked_mean(k3(logp, logp_ref)) if not kl_in_reward)
Logged: reward, KL, clip fraction, approx KL = 1/2 mean (logp - logp_old)^2, entropy, value loss.
"""

from __future__ import annotations

from ..errors import SeqlabError

import torch
import torch.nn as nn

from .common import gae, kl_estimate, masked_mean, masked_whiten


def ppo_losses(logp, old_logp, advantages, values, old_values, returns, mask, clip_coef: float,
               vf_clip: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """All (B, T). Returns (pg_loss, vf_loss, stats)."""
    ratio = torch.exp(logp - old_logp)
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef))
    pg_loss = masked_mean(pg, mask)
    v_clipped = old_values + (values - old_values).clamp(-vf_clip, vf_clip)
    vf = torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
    vf_loss = 0.5 * masked_mean(vf, mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean(((ratio - 1).abs() > clip_coef).float(), mask).item(),
                 "approx_kl": (0.5 * masked_mean((logp - old_logp) ** 2, mask)).item(),
                 "value_loss": vf_loss.item(), "policy_loss": pg_loss.item()}
    return pg_loss, vf_loss, stats


def token_rewards(scores: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                  mask: torch.Tensor, kl_beta: float, kind: str) -> torch.Tensor:
    """Per-token rewards (B, T): -kl_beta * KL_t on every token, the score added at the last one."""
    r = torch.zeros_like(old_logp)
    if ref_logp is not None and kl_beta:
        r = -kl_beta * kl_estimate(old_logp, ref_logp, kind) * mask
    # the last completion token: the highest position where the mask is 1 (completions
    # start after the prompt, so this is not the completion length - 1)
    positions = torch.arange(1, mask.size(1) + 1, device=mask.device)
    last = (mask * positions).argmax(1)
    r[torch.arange(r.size(0), device=r.device), last] += scores * (mask.sum(1) > 0)
    return r


class ValueModel(nn.Module):
    """V(prefix) for every position: a copy of the policy with a linear head on its logits."""

    def __init__(self, body: nn.Module, vocab_size: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(vocab_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids):
        logits, _ = self.body(input_ids)
        return self.head(logits.float()).squeeze(-1)


def run_ppo(cfg, progress: bool = True) -> dict:
    import copy

    from ..engine import all_gather_cat, all_gather_padded, all_reduce_sum, weighted_sum
    from ..engine import ranks as process_ranks
    from ..sampling import DecodeRule, generate
    from .common import device_of, token_logprobs, token_logprobs_and_entropy
    from .data import completion_batch, load_jsonl
    from .prompting import prompt_format
    from .runner import extra_columns, load_policy, optimise, prepare_out, rewards_for

    if cfg.temperature <= 0:
        raise SeqlabError("config key 'post.temperature': PPO samples, so it must be > 0")
    model, tok, _ = load_policy(cfg, drop_dropout=True)
    device = device_of(model)
    rows = load_jsonl(cfg.data, ("prompt",), tok)
    fmt = prompt_format(tok, cfg.chat_template, cfg.system)
    col_names = extra_columns(rows)
    if cfg.reward_model:
        from .reward_model import load_reward_model

        rm = load_reward_model(cfg.reward_model).to(device)
        rewards = None
    else:
        rewards = rewards_for(cfg)
    ref = copy.deepcopy(model).eval() if cfg.kl_beta else None
    value = ValueModel(copy.deepcopy(model), model.vocab_size).to(device)
    both = nn.ModuleDict({"policy": model, "value": value})
    out = prepare_out(cfg, "ppo")
    ranks = process_ranks()
    g = torch.Generator().manual_seed(cfg.seed)
    B = cfg.batch_size
    updates_per_rollout = cfg.ppo_epochs * cfg.minibatches
    roll: dict = {}

    def new_rollout():
        pick = torch.randint(len(rows), (B,), generator=g).tolist()
        prompts = [fmt.prompt_ids(rows[i]["prompt"]) for i in pick]
        # data-parallel: each rank samples and scores its rows (random numbers drawn for the
        # whole batch: a sample does not depend on the world size), then every rank holds
        # the whole rollout, so advantages are whitened over the global batch as in one process
        mine = ranks.shard(B, "post.batch_size")
        gen = generate(model, prompts, cfg.max_new_tokens, DecodeRule(temperature=cfg.temperature),
                       fmt.end_id, tok.pad_id, generator=g, shard=mine)
        texts = [tok.decode(c) for c in gen.rows()]
        ids, mask, _ = completion_batch(prompts[mine], gen, tok.pad_id)
        local_scores = None
        if rewards is not None:
            prompt_text = [rows[i]["prompt"] for i in pick[mine]]
            columns = {c: [rows[i].get(c) for i in pick[mine]] for c in col_names}
            local_scores = torch.tensor(rewards(prompt_text, texts, columns)[0], device=device)
        ids, mask = all_gather_padded(ids, ranks, tok.pad_id), all_gather_padded(mask, ranks, 0)
        gen_lengths = all_gather_cat(gen.lengths, ranks)
        truncated = all_gather_cat((~gen.finished).float(), ranks)
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])
            old_logp = token_logprobs(logits, ids[:, 1:], cfg.temperature) * mask
            ref_logp = token_logprobs(ref(ids[:, :-1])[0], ids[:, 1:], cfg.temperature) if ref else None
            old_values = value(ids[:, :-1]) * mask
            if rewards is None:
                lengths = torch.tensor([len(p) for p in prompts], device=device) + gen_lengths
                scores = rm(ids, lengths)
            else:
                scores = all_gather_cat(local_scores, ranks)
            r = token_rewards(scores, old_logp, ref_logp if cfg.kl_in_reward else None, mask, cfg.kl_beta,
                              cfg.kl_estimator)
            adv, returns = gae(r, old_values, mask, cfg.gamma, cfg.gae_lambda)
            if cfg.whiten_advantages:
                adv = masked_whiten(adv, mask) * mask
            kl = masked_mean(kl_estimate(old_logp, ref_logp, cfg.kl_estimator), mask).item() if ref else 0.0
        roll.update(ids=ids, mask=mask, old_logp=old_logp, ref_logp=ref_logp, old_values=old_values, adv=adv,
                    returns=returns, order=torch.randperm(B, generator=g),
                    stats={"reward": scores.mean().item(), "kl": kl,
                           "completion_len": gen_lengths.float().mean().item(),
                           "truncated": truncated.mean().item()})

    def step_fn(step):
        k = step % updates_per_rollout
        if k == 0 or "order" not in roll:  # (or the first step after resuming a run cut mid-rollout)
            new_rollout()
        elif k % cfg.minibatches == 0:  # a new epoch over the rollout: new minibatches, as TRL's PPOTrainer
            roll["order"] = torch.randperm(roll["order"].numel(), generator=g)
        mb = roll["order"].chunk(cfg.minibatches)[k % cfg.minibatches]
        mb = mb[ranks.shard(mb.numel(), "post.batch_size / post.minibatches")].to(device)  # this rank's rows
        ids, mask = roll["ids"][mb], roll["mask"][mb]
        # this rank's share of the minibatch's token means (all of it in one process)
        tokens = float(mask.sum())
        share = tokens / max(float(all_reduce_sum(torch.tensor([tokens], dtype=torch.float64, device=device), ranks)), 1.0)
        logits, _ = model(ids[:, :-1])
        # and the entropy of the distribution sampled from (temperature-scaled), as TRL logs it
        logp, entropy = token_logprobs_and_entropy(logits, ids[:, 1:], cfg.temperature)
        values = value(ids[:, :-1])
        pg_loss, vf_loss, stats = ppo_losses(logp, roll["old_logp"][mb], roll["adv"][mb], values,
                                             roll["old_values"][mb], roll["returns"][mb], mask, cfg.epsilon,
                                             cfg.vf_clip)
        loss = pg_loss + cfg.vf_coef * vf_loss
        if roll["ref_logp"] is not None and not cfg.kl_in_reward:
            loss = loss + cfg.kl_beta * masked_mean(kl_estimate(logp, roll["ref_logp"][mb], "k3"), mask)
        stats["entropy"] = masked_mean(entropy, mask).item()
        return loss * share, {**roll["stats"], **weighted_sum(stats, share, ranks)}

    columns = ["loss", "reward", "kl", "policy_loss", "value_loss", "clip_frac", "approx_kl", "entropy",
               "completion_len", "truncated"]
    stats = optimise(model, cfg, out, columns, step_fn, progress, "PPO", ("reward", "kl"), trained=both,
                     generator=g, boundary=updates_per_rollout)
    return {"algorithm": "ppo", "step": stats["steps_done"], **{k: stats.get(k) for k in columns}, "run": str(out)}
