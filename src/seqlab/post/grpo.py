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

logp_old are the log-probs of the policy that sampled: with num_iterations = 1 the
trainer's own, detached (the sampling policy is the one being updated; TRL does the
same), else stored at rollout time, so num_iterations > 1 reuses rollouts correctly.
They must be log-probs of the distribution that actually drew the tokens: sampling with temperature T means
logp is computed at temperature T too; top-k/top-p/min-p truncation is refused
by the trainer (the truncated distribution is not the policy being optimised).
With one iteration and no KL, the loss value is ~0 at every step (rho = 1 and
advantages are centred per group): its gradient is a group-baseline REINFORCE.

micro_batch > 0 splits an update's rows into chunks, each forward + backward on its own
(gradient accumulation): the loss is a sum over tokens (or rows) with a normaliser of the
whole batch, so the chunk losses, each weighted by its share of that normaliser
(`chunk_weight`), add up to the loss of the whole batch and the update is the same up to
float rounding. Memory then grows with the chunk, not the rollout: on SmolLM2-135M the
activations of 64 rows x 170 tokens kept for backward are ~14 GB.
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


def chunk_weight(mask: torch.Tensor, rows: slice, loss_type: str) -> float:
    """The share of the whole batch's loss normaliser that `rows` hold: of the counted
    tokens for the token-mean aggregations, of the rows for the per-row ones."""
    if loss_type in ("bnpo", "dapo"):
        return float(mask[rows].sum() / mask.sum().clamp(min=1))
    return (rows.stop - rows.start) / mask.size(0)


def run_grpo(cfg, progress: bool = True) -> dict:
    """GRPO on {"prompt", ...columns} JSONL with reward functions (cfg.rewards)."""
    import copy
    import json

    from ..engine import all_gather_cat, all_gather_objects, all_reduce_sum, weighted_sum
    from ..engine import ranks as process_ranks
    from ..errors import SeqlabError
    from ..sampling import DecodeRule, generate
    from .common import (continuation_logits, device_of, group_advantages, token_logprobs,
                         token_logprobs_and_entropy)
    from .data import load_jsonl
    from .prompting import prompt_format
    from .runner import extra_columns, load_policy, optimise, prepare_out, rewards_for

    if cfg.temperature <= 0:
        raise SeqlabError("config key 'post.temperature': GRPO samples, so it must be > 0")
    if cfg.group_size < 2:  # one completion per prompt: every group advantage is 0, nothing is learned
        raise SeqlabError("config key 'post.group_size': GRPO compares completions of a prompt, so it must be >= 2")
    model, tok, _ = load_policy(cfg, drop_dropout=True)
    device = device_of(model)
    rows = load_jsonl(cfg.data, ("prompt",), tok)
    rewards = rewards_for(cfg)
    col_names = extra_columns(rows)
    fmt = prompt_format(tok, cfg.chat_template, cfg.system)
    prompt_ids = [fmt.prompt_ids(r["prompt"]) for r in rows]
    ref = None
    if cfg.kl_beta != 0.0:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    out = prepare_out(cfg, "grpo")
    ranks = process_ranks()
    g = torch.Generator().manual_seed(cfg.seed)
    G = cfg.group_size
    rule = DecodeRule(temperature=cfg.temperature)  # no truncation: the ratio's denominator is the policy
    rollout: dict = {}
    samples_path = out / "samples.jsonl"

    def new_rollout(step):
        pick = torch.randint(len(rows), (cfg.prompts_per_step,), generator=g).tolist()  # the global batch
        prompts = [prompt_ids[i] for i in pick for _ in range(G)]
        # data-parallel: each rank samples and scores whole groups; the random numbers are
        # drawn for the global batch, so a row's sample does not depend on the world size
        mine = ranks.shard(cfg.prompts_per_step, "post.prompts_per_step")
        pick = pick[mine]
        rows_mine = slice(mine.start * G, mine.stop * G)
        gen = generate(model, prompts, cfg.max_new_tokens, rule, fmt.end_id, tok.pad_id, generator=g, shard=rows_mine)
        prompts = prompts[rows_mine]
        completions_ids = gen.rows(strip_eos=True)
        completions = [tok.decode(c) for c in completions_ids]
        prompt_text = [rows[i]["prompt"] for i in pick for _ in range(G)]
        columns = {c: [rows[i].get(c) for i in pick for _ in range(G)] for c in col_names}
        totals, per_fn = rewards(prompt_text, completions, columns)
        r = torch.tensor(totals, device=device)
        adv = group_advantages(r, G, cfg.advantage_scale)
        # (B, L) over completion tokens: mask 1 up to and including a row's eos
        comp = gen.tokens.clone()  # out of inference mode: autograd saves it (embedding indices)
        mask = (torch.arange(comp.size(1), device=device) < gen.lengths[:, None]).float()
        # the sampler's log-probs serve only when a rollout is reused (num_iterations > 1)
        old_logp = gen.sampling_logprobs * mask if cfg.num_iterations > 1 else None
        ref_logp = None
        if ref is not None:
            with torch.no_grad():
                ref_logp = torch.cat([token_logprobs(continuation_logits(ref, prompts[c], comp[c], tok.pad_id),
                                                     comp[c], cfg.temperature) for c in chunks(comp.size(0))])
        # the logged statistics are the global batch's
        r = all_gather_cat(r, ranks)
        groups = r.view(-1, G)
        lengths = all_gather_cat(gen.lengths.float(), ranks)
        truncated = all_gather_cat((~gen.finished).float(), ranks)
        stats = {"reward": r.mean().item(), "reward_std": r.std().item() if r.numel() > 1 else 0.0,
                 "frac_zero_std": (groups.std(1) == 0).float().mean().item() if G > 1 else 1.0,
                 "completion_len": lengths.mean().item(), "completion_len_min": lengths.min().item(),
                 "completion_len_max": lengths.max().item(), "truncated": truncated.mean().item()}
        gathered = all_gather_objects((per_fn, prompt_text, completions, totals), ranks)
        for name in per_fn:
            seen = [v for part in gathered for v in part[0][name] if v is not None]
            stats[f"reward/{name}"] = sum(seen) / len(seen) if seen else None
        if ranks.main and cfg.samples_every and step % cfg.samples_every == 0:
            with open(samples_path, "a", encoding="utf-8") as f:
                for _, texts, comps, tot in gathered:
                    for b in range(0, len(comps), G):
                        f.write(json.dumps({"step": step, "prompt": texts[b], "completion": comps[b],
                                            "reward": tot[b]}) + "\n")
        # this rank's share of the loss's normaliser: of the global batch's tokens (dapo, the
        # global token mean), else 1 / world (equal shards: bnpo is then a mean of per-rank
        # token means, as TRL's; grpo and dr_grpo are means over rows)
        tokens = float(mask.sum())
        token_share = tokens / max(float(all_reduce_sum(torch.tensor([tokens], dtype=torch.float64, device=device), ranks)), 1.0)
        return {"prompts": prompts, "comp": comp, "mask": mask, "old": old_logp, "ref": ref_logp, "adv": adv,
                "stats": stats, "token_share": token_share,
                "share": token_share if cfg.loss_type == "dapo" else 1.0 / ranks.world}

    def chunks(n):
        size = cfg.micro_batch or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def step_fn(step):
        if step % cfg.num_iterations == 0 or "comp" not in rollout:  # (or resumed mid-rollout)
            rollout.update(new_rollout(step))
        comp, mask = rollout["comp"], rollout["mask"]
        parts = chunks(comp.size(0))
        total, lstats, entropy = 0.0, {}, 0.0
        for rows in parts:
            # the chunk's columns up to its longest completion (the rollout's width is its
            # longest row's: computing the rest would be padding)
            width = max(1, int(mask[rows].sum(1).max()))
            c_rows, m_rows = comp[rows, :width], mask[rows, :width]
            # each prompt's forward (and backward) once for its rows (common.continuation_logits)
            logits = continuation_logits(model, rollout["prompts"][rows], c_rows, tok.pad_id)
            # and the entropy of the sampled distribution (as TRL logs it), in the same pass
            logp, ent = token_logprobs_and_entropy(logits, c_rows, cfg.temperature)
            ref_rows = rollout["ref"][rows, :width] if rollout["ref"] is not None else None
            # one update per rollout: the policy that sampled is the one being updated, so its
            # log-probs are the trainer's own (ratio exactly 1, as TRL; the sampler's, from
            # another code path or precision, differ by rounding); else the sampler's, stored
            old = logp.detach() if cfg.num_iterations == 1 else rollout["old"][rows, :width]
            loss, chunk_stats = grpo_loss(logp, old, rollout["adv"][rows], m_rows, cfg.epsilon,
                                          cfg.epsilon_high, cfg.kl_beta, ref_rows, cfg.loss_type, cfg.max_new_tokens)
            w = chunk_weight(mask, rows, cfg.loss_type)
            tokens = chunk_weight(mask, rows, "dapo")  # the chunk's share of the counted tokens
            entropy += float((ent * m_rows).sum() / mask.sum().clamp(min=1))
            for k, v in chunk_stats.items():  # token means over the whole batch
                lstats[k] = lstats.get(k, 0.0) + v * tokens
            if len(parts) == 1:  # the engine backpropagates (this rank's share of) the loss
                total = loss * rollout["share"]
            else:  # gradient accumulation: the engine clips and steps on the sum
                (loss * (w * rollout["share"])).backward()
                total += float(loss.detach()) * w * rollout["share"]
        # token means over the global batch (data-parallel: each rank's weighted by its tokens)
        lstats = weighted_sum({**lstats, "entropy": entropy}, rollout["token_share"], ranks)
        return torch.as_tensor(total, device=device), {**rollout["stats"], **lstats}

    columns = ["loss", "reward", "reward_std", "frac_zero_std", "completion_len", "completion_len_min",
               "completion_len_max", "truncated", "kl", "clip_low", "clip_high", "entropy",
               *[f"reward/{n}" for n in rewards.names]]
    stats = optimise(model, cfg, out, columns, step_fn, progress, f"GRPO ({cfg.loss_type})", ("reward", "kl"),
                     generator=g, boundary=cfg.num_iterations)
    return {"algorithm": "grpo", "step": stats["steps_done"], **{k: stats.get(k) for k in columns}, "run": str(out)}
