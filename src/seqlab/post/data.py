"""JSONL data for post-training, and its encoding into model inputs.

    SFT        {"prompt": ..., "completion": ...}
    DPO / RM   {"prompt": ..., "chosen": ..., "rejected": ...}
    RL         {"prompt": ..., <any other columns, e.g. "answer">}

A sequence is `<bos> prompt completion <eos>` (or the chat template's form of it, see
prompting.py); the completion mask covers the completion tokens and the eos (what the
policy produces).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..data.examples import iter_jsonl
from ..errors import SeqlabError


def load_jsonl(path: str | Path, required: tuple[str, ...], tokenizer: Tokenizer | None = None) -> list[dict]:
    """JSON objects, one per line, each with string values for the `required` keys; with a
    `tokenizer`, those values must be encodable (errors name the file, line and key)."""
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in required if k not in row]
        if missing:
            raise SeqlabError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
        for k in required:
            if not isinstance(row[k], str):
                raise SeqlabError(f"{path}:{lineno}: key '{k}' must be a string")
            if tokenizer is not None:
                tokenizer.check_encodable(row[k], f"{path}:{lineno}: key '{k}'")
        rows.append(row)
    return rows


def pad_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to (B, T) input ids and a float completion mask, on `device`."""
    T = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(pairs), T)
    for b, (i, m) in enumerate(pairs):
        ids[b, : len(i)] = torch.tensor(i)
        mask[b, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return ids.to(device), mask.to(device)


def completion_batch(prompts: list[list[int]], gen, pad_id: int):
    """Each prompt followed by its sampled completion (a sampling.Generation), right-padded,
    as tensors built without a per-row loop (a rollout's bookkeeping is part of every RL step):
    ids (B, T), the completion mask over targets ids[:, 1:] (B, T - 1, float) and the
    sampling log-probs aligned with it (0 elsewhere). The same ids and mask as pad_batch on
    (prompt + completion, [0] * len(prompt) + [1] * len(completion)) pairs."""
    B, L = gen.tokens.shape
    device = gen.tokens.device  # the sampler's: the model's device
    plen = torch.tensor([len(p) for p in prompts], device=device)
    P = int(plen.max())
    T = int((plen + gen.lengths).max())
    ids = torch.full((B, P + L), pad_id, dtype=torch.long, device=device)
    ids[:, :P] = torch.tensor([p + [pad_id] * (P - len(p)) for p in prompts], dtype=torch.long, device=device)
    slot = plen.unsqueeze(1) + torch.arange(L, device=device)  # (B, L) where completion token t of each row goes
    ids.scatter_(1, slot, gen.tokens)  # tokens after a row's end are pad already
    pos = torch.arange(1, T, device=device)
    mask = ((pos >= plen.unsqueeze(1)) & (pos < (plen + gen.lengths).unsqueeze(1))).float()
    old = torch.zeros(B, P + L, device=device)
    old.scatter_(1, slot - 1, gen.sampling_logprobs)  # the log-prob of the token at slot predicted from slot - 1
    return ids[:, :T], mask, old[:, :T - 1]
