"""Text in, text out: prompts through the tokenizer, the sampler, and back.

The layer between the CLI (strings) and sampling.py (token ids).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .data.tokenizer import Tokenizer
from .sampling import DecodeRule, Generation, beam_search, generate


@dataclass
class TextSamples:
    texts: list[str]
    logprobs: list[float]  # total model log-prob of each completion (eos included when produced)
    finished: list[bool]
    rule: str
    generation: Generation


def sample_text(model, tokenizer: Tokenizer, n: int, prompt: str = "", max_new_tokens: int | None = None,
                rule: DecodeRule = DecodeRule(), beam: int = 0, seed: int | None = None,
                device: str | torch.device = "cpu") -> TextSamples:
    tokenizer.check_encodable(prompt, "prompt")
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    limit = max_new_tokens if max_new_tokens is not None else (model.max_len or 256)
    if beam:  # the n best distinct beams (at most `beam` of them), best first
        gen = beam_search(model, [ids], limit, beam, tokenizer.eos_id, tokenizer.pad_id, top=n)
    else:
        g = torch.Generator(device=device)
        # no seed: a fresh one from the OS (torch.seed() would also reseed the global RNG)
        g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 2)
        gen = generate(model, [ids] * n, limit, rule, tokenizer.eos_id, tokenizer.pad_id, generator=g)
    texts = [prompt + tokenizer.decode(row) for row in gen.rows()]
    return TextSamples(texts, gen.total_logprob().tolist(), gen.finished.tolist(), gen.rule, gen)
