"""Supervised fine-tuning (SFT): next-token cross-entropy on completion tokens only.

    loss = - sum_{b,t} m_{b,t} log pi(x_{b,t} | x_{b,<t}) / max(sum_{b,t} m_{b,t}, 1)

m marks completion tokens (and the eos); prompt and padding tokens carry no
loss. The token-mean over the whole batch (not a mean of per-sequence means)
weights every completion token equally; a batch with no completion token
gives loss 0, not NaN. Data-parallel: each rank sums its rows' terms over the
*global* batch's token count, so the ranks' losses add up to the one above.
"""

from __future__ import annotations

import torch

from .common import sequence_logprobs


def sft_loss(model, input_ids: torch.Tensor, completion_mask: torch.Tensor,
             n_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """n_tokens: the normaliser, sum m over the batch (default: this batch's)."""
    logp = sequence_logprobs(model, input_ids, completion_mask)  # (B, T-1), 0 outside the mask
    if n_tokens is None:
        n_tokens = completion_mask[:, 1:].sum()
    return -logp.sum() / n_tokens.clamp(min=1)


def run_sft(cfg, progress: bool = True) -> dict:
    """SFT on {"prompt", "completion"} JSONL; returns the final metrics."""
    from ..engine import all_reduce_sum
    from ..engine import ranks as process_ranks
    from .common import device_of
    from .data import load_jsonl, pad_batch
    from .prompting import prompt_format
    from .runner import load_policy, optimise, prepare_out

    model, tok, _ = load_policy(cfg, drop_dropout=False)
    device = device_of(model)
    rows = load_jsonl(cfg.data, ("prompt", "completion"), tok)
    fmt = prompt_format(tok, cfg.chat_template, cfg.system)
    pairs = [fmt.pair(r["prompt"], r["completion"], model.max_len) for r in rows]
    out = prepare_out(cfg, "sft")
    g = torch.Generator().manual_seed(cfg.seed)
    ranks = process_ranks()
    mine = ranks.shard(cfg.batch_size, "post.batch_size")

    def step_fn(step):
        idx = torch.randint(len(pairs), (cfg.batch_size,), generator=g).tolist()  # the global batch
        ids, mask = pad_batch([pairs[i] for i in idx[mine]], tok.pad_id, device)  # this rank's rows
        n_tokens = all_reduce_sum(mask[:, 1:].sum().double(), ranks)
        completion_tokens = all_reduce_sum(mask.sum().double(), ranks)
        return sft_loss(model, ids, mask, n_tokens), {"completion_tokens": float(completion_tokens)}

    stats = optimise(model, cfg, out, ["loss", "completion_tokens"], step_fn, progress, "SFT", generator=g)
    return {"algorithm": "sft", "step": stats["steps_done"], "loss": stats["loss"], "run": str(out)}
