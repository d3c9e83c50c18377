"""Rejection-sampling fine-tuning (expert iteration; "Reinforce: SFT the policy on
its successful solutions"; Anthony et al. 2017, Zelikman et al. 2022 STaR).

    repeat `rounds` times:
        sample k = group_size completions per prompt from the current policy
        keep (prompt, completion) pairs with total reward >= reward_threshold
        SFT on the kept pairs for steps / rounds steps:
            loss = - sum m log pi(y | x) / max(sum m, 1)   (sft.sft_loss)

Sampling uses temperature only (no truncation). A round that keeps nothing
makes no update (loss 0) and says so in metrics.csv (`kept` = 0).
"""

from __future__ import annotations

import torch

from .sft import sft_update_loss


def run_rejection(cfg, progress: bool = True) -> dict:
    from ..engine import all_gather_objects, all_reduce_sum
    from ..engine import ranks as process_ranks
    from ..sampling import DecodeRule, generate
    from .common import device_of
    from .data import load_jsonl, pad_batch
    from .prompting import prompt_format
    from .runner import extra_columns, load_policy, optimise, prepare_out, rewards_for

    model, tok, _ = load_policy(cfg, drop_dropout=False)
    device = device_of(model)
    rows = load_jsonl(cfg.data, ("prompt",), tok)
    fmt = prompt_format(tok, cfg.chat_template, cfg.system)
    rewards = rewards_for(cfg)
    col_names = extra_columns(rows)
    out = prepare_out(cfg, "rejection")
    g = torch.Generator().manual_seed(cfg.seed)
    per_round = max(1, cfg.steps // cfg.rounds)
    state: dict = {}
    ranks = process_ranks()
    batch_mine = ranks.shard(cfg.batch_size, "post.batch_size")

    def resample():
        picked = rows
        if cfg.round_prompts and cfg.round_prompts < len(rows):
            picked = [rows[i] for i in torch.randperm(len(rows), generator=g)[: cfg.round_prompts].tolist()]
        prompts = [fmt.prompt_ids(r["prompt"]) for r in picked for _ in range(cfg.group_size)]
        # data-parallel: each rank samples and scores its part (random numbers drawn for all
        # rows, so a sample does not depend on the world size); the kept set is gathered
        mine = ranks.split(len(prompts))
        gen = generate(model, prompts, cfg.max_new_tokens, DecodeRule(temperature=cfg.temperature),
                       fmt.end_id, tok.pad_id, generator=g, shard=mine)
        prompts = prompts[mine]
        texts = [tok.decode(c) for c in gen.rows()]
        prompt_text = [r["prompt"] for r in picked for _ in range(cfg.group_size)][mine]
        columns = {c: [r.get(c) for r in picked for _ in range(cfg.group_size)][mine] for c in col_names}
        totals, _ = rewards(prompt_text, texts, columns)
        found = []
        for b, total in enumerate(totals):
            if total >= cfg.reward_threshold and bool(gen.finished[b]):
                n = int(gen.lengths[b])
                ids = prompts[b] + gen.tokens[b, :n].tolist()
                found.append((ids, [0] * len(prompts[b]) + [1] * n))
        kept, all_totals = {}, []
        for part, tot in all_gather_objects((found, totals), ranks):
            kept.update((tuple(ids), (ids, m)) for ids, m in part)
            all_totals += tot
        state["kept"] = list(kept.values())
        state["reward"] = sum(all_totals) / len(all_totals)

    def step_fn(step):
        if step % per_round == 0 or "kept" not in state:  # (or resumed mid-round, e.g. after more steps)
            resample()
        kept = state["kept"]
        stats = {"kept": float(len(kept)), "reward": state["reward"]}
        if not kept:  # no update (a loss without a graph; see optimise)
            return torch.zeros((), device=device), stats
        idx = torch.randint(len(kept), (cfg.batch_size,), generator=g).tolist()
        ids, mask = pad_batch([kept[i] for i in idx[batch_mine]], tok.pad_id, device)  # this rank's rows
        return sft_update_loss(model, ids, mask, all_reduce_sum(mask[:, 1:].sum().double(), ranks),
                               cfg.micro_batch), stats

    stats = optimise(model, cfg, out, ["loss", "kept", "reward"], step_fn, progress, "rejection sampling",
                     ("loss", "reward"), generator=g, boundary=per_round)
    return {"algorithm": "rejection", "step": stats["steps_done"], **stats, "run": str(out)}
