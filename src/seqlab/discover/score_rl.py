"""GRPO directly on a discovery problem's score (the `grpo` searcher's extra step).

One prompt (the empty construction: just <bos>), so each update samples one group
of `grpo_group` x 4 strings. Reward of a sample: the score of its decoded and
repaired construction (repair only: the local search comes after sampling, as in
PatternBoost); a string that decodes to nothing gets the batch's lowest score
minus one. The loss is seqlab's GRPO (post/grpo.py: group-normalised advantages,
clipped ratio, token-mean "dapo" aggregation, no KL), one update per rollout.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..engine import Engine, OptimSettings
from ..post.common import group_advantages, token_logprobs
from ..post.data import completion_batch
from ..post.grpo import grpo_loss
from ..sampling import DecodeRule, generate


def score_rewards(problem, strings: list[str], rng: np.random.Generator) -> list[float]:
    scores: list[float | None] = []
    for s in strings:
        try:
            c = problem.decode(s)
        except Exception:  # a user's decoder may raise on garbage: that sample is undecodable
            c = None
        scores.append(None if c is None else float(problem.score(problem.repair(c, rng))))
    seen = [x for x in scores if x is not None]
    floor = (min(seen) if seen else 0.0) - 1.0
    return [floor if x is None else x for x in scores]


def grpo_on_score(side, problem, cfg, generator: torch.Generator, deadline: float) -> dict:
    """cfg.grpo_steps GRPO updates of side.model (stops early at `deadline`)."""
    model, tok = side.model, side.tokenizer
    if getattr(side, "grpo_engine", None) is None:  # one optimizer for the whole run: Adam moments carry over
        side.grpo_engine = Engine(model, OptimSettings(lr=cfg.grpo_lr, grad_clip=1.0),
                                  device=next(model.parameters()).device, hint="lower grpo_lr")
    engine = side.grpo_engine
    rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator)))
    n = cfg.grpo_group * 4
    rewards_seen = []
    for _ in range(cfg.grpo_steps):
        if time.perf_counter() >= deadline:
            break
        model.eval()
        with torch.no_grad():
            gen = generate(model, [[tok.bos_id]] * n, side.block_size - 1, DecodeRule(temperature=1.0), tok.eos_id,
                           tok.pad_id, generator=generator)
        texts = [tok.decode(ids) for ids in gen.rows(strip_eos=True)]
        r = torch.tensor(score_rewards(problem, texts, rng), device=gen.tokens.device)
        rewards_seen.append(r.mean().item())
        adv = group_advantages(r, n, "group")
        ids, mask, old = completion_batch([[tok.bos_id]] * n, gen, tok.pad_id)
        model.train()

        def loss_fn():
            logits, _ = model(ids[:, :-1])
            logp = token_logprobs(logits, ids[:, 1:], 1.0)
            return grpo_loss(logp, old, adv, mask, loss_type="dapo")[0]

        engine.update(0, loss_fn)  # constant lr: the schedule's position does not matter
    model.eval()
    return {"grpo_reward_first": rewards_seen[0] if rewards_seen else None,
            "grpo_reward_last": rewards_seen[-1] if rewards_seen else None}
