"""Masked language modelling (BERT, Devlin et al. 2019) on line files: task type "mlm".

A bidirectional Transformer encoder reads each line with some tokens hidden and predicts
them from both sides. Of the line's real tokens (not <bos>, <eos> or padding) each is chosen
with probability 0.15; a chosen token is replaced by <mask> with probability 0.8, by a token
drawn uniformly from the ordinary vocabulary with probability 0.1, and left as it is with
probability 0.1 (so the encoder cannot rely on <mask> marking every prediction). The loss is
the cross-entropy of the original token at the chosen positions only:

    loss = - sum_{chosen i} log softmax(lm_head(encode(masked line))_i)[original_i] / #chosen

The encoder's weights then start a classifier (`seqlab train --data labelled.jsonl
--init-from MLM_RUN`): BERT's pretrain-then-fine-tune, next to GPT's causal LM + last token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK = "<mask>"
MASK_PROB, REPLACE_MASK, REPLACE_RANDOM = 0.15, 0.8, 0.1


def mask_tokens(x: torch.Tensor, lengths: torch.Tensor, mask_id: int, ordinary: tuple[int, int],
                generator: torch.Generator, prob: float = MASK_PROB) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, targets) for rows x (B, T) = <bos> ids <eos> <pad>..., lengths (B,)
    counting <bos> and <eos>; targets hold the original token where one was chosen, else -1.
    `ordinary`: the [lo, hi) range of token ids a random replacement is drawn from."""
    B, T = x.shape
    pos = torch.arange(T)[None, :]
    real = (pos >= 1) & (pos < lengths[:, None] - 1)
    u = torch.rand(B, T, generator=generator)
    how = torch.rand(B, T, generator=generator)
    random_ids = torch.randint(ordinary[0], ordinary[1], (B, T), generator=generator)
    chosen = real & (u < prob)
    targets = torch.where(chosen, x, torch.full_like(x, -1))
    inputs = x.clone()
    inputs[chosen & (how < REPLACE_MASK)] = mask_id
    swap = chosen & (how >= REPLACE_MASK) & (how < REPLACE_MASK + REPLACE_RANDOM)
    inputs[swap] = random_ids[swap]
    return inputs, targets


def mlm_loss_sum(model, inputs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> tuple:
    """(summed cross-entropy at the chosen positions, logits (B, T, V))."""
    logits = model.lm_head(model.encode(inputs, lengths))
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1,
                           reduction="sum")
    return loss, logits


def ordinary_range(tokenizer) -> tuple[int, int]:
    """Ids of ordinary tokens: after the specials (<pad>, <bos>, <eos>, <mask>, ...)."""
    return len(tokenizer.specials), tokenizer.vocab_size


@torch.no_grad()
def evaluate(model, data, tokenizer, device, seed: int, batch_size: int = 256) -> dict:
    """val_loss (per chosen token) and mlm_accuracy (the original token ranked first) on the
    split with one fixed masking (the same at every evaluation: comparable numbers)."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    mask_id = tokenizer.encode(MASK)[0]
    total, right, count = 0.0, 0, 0
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        lengths = data.lengths[idx] + 2
        x = data.tokens[idx, : int(lengths.max())]
        inputs, targets = mask_tokens(x, lengths, mask_id, ordinary_range(tokenizer), g)
        loss, logits = mlm_loss_sum(model, inputs.to(device), lengths.to(device), targets.to(device))
        chosen = targets != -1
        total += float(loss)
        right += int((logits.argmax(-1).cpu()[chosen] == targets[chosen]).sum())
        count += int(chosen.sum())
    model.train(was)
    return {"val_loss": total / max(count, 1), "mlm_accuracy": right / max(count, 1)}
