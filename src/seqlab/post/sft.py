"""Supervised fine-tuning (SFT): next-token cross-entropy on completion tokens only.

    loss = - sum_{b,t} m_{b,t} log pi(x_{b,t} | x_{b,<t}) / max(sum_{b,t} m_{b,t}, 1)

m marks completion tokens (and the eos); prompt and padding tokens carry no
loss. The token-mean over the whole batch (not a mean of per-sequence means)
weights every completion token equally; a batch with no completion token
gives loss 0, not NaN. Data-parallel: each rank sums its rows' terms over the
*global* batch's token count, so the ranks' losses add up to the one above.

micro_batch > 0 (`sft_update_loss`): the loss is a sum over tokens with the whole batch's
normaliser, so it splits over chunks of rows exactly; each chunk (rows of similar length
together, cut to its longest row) runs its forward and backward on its own and the
gradients add up. Memory then grows with the chunk: on SmolLM2-135M in bf16 an update of
8 digit-by-digit worked examples (~300 tokens each) holds ~4 GiB of activations and
output-layer log-probs at once.
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


def sft_update_loss(model, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                    n_tokens: torch.Tensor, micro_batch: int = 0) -> torch.Tensor:
    """This update's SFT loss for the engine: with micro_batch 0 (or at least the batch's
    rows) the loss tensor, backpropagated by the engine; else chunks of micro_batch rows,
    each backpropagated here (gradient accumulation), and the loss's value."""
    B = input_ids.size(0)
    if not micro_batch or micro_batch >= B:
        return sft_loss(model, input_ids, completion_mask, n_tokens)
    # rows end at their last completion token (right padding; a row without one keeps its width)
    has = completion_mask.any(1)
    ends = torch.where(has, completion_mask.size(1) - completion_mask.flip(1).argmax(1), completion_mask.size(1))
    order = torch.argsort(ends, descending=True, stable=True).tolist()  # similar lengths share a chunk
    total = torch.zeros((), device=input_ids.device)
    for i in range(0, B, micro_batch):
        rows = order[i:i + micro_batch]
        width = int(ends[rows].max())
        part = sft_loss(model, input_ids[rows, :width], completion_mask[rows, :width], n_tokens)
        part.backward()
        total += part.detach()
    return total


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
        loss = sft_update_loss(model, ids, mask, n_tokens, cfg.micro_batch)
        return loss, {"completion_tokens": float(completion_tokens)}

    stats = optimise(model, cfg, out, ["loss", "completion_tokens"], step_fn, progress, "SFT", generator=g)
    return {"algorithm": "sft", "step": stats["steps_done"], "loss": stats["loss"], "run": str(out)}
