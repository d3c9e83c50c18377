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
    ids = tokenizer.encode_prompt(prompt)
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


# ---------------------------------------------------------------- chat
# End-of-turn tokens of the common chat formats (ChatML, Llama 3, Phi, Gemma): a reply ends
# at the first of these that the tokenizer has as a special token, as well as at eos.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>", "<end_of_turn>")


def chat_prompt_ids(tokenizer: Tokenizer, messages: list[dict]) -> list[int]:
    """The ids of `messages` through the run's chat template, ending with the assistant's
    generation prompt: the same ids as transformers' apply_chat_template."""
    from .data.chat import check_messages, render_chat
    from .errors import SeqlabError

    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise SeqlabError("this run's tokenizer has no chat template (import a chat model with seqlab import)")
    check_messages(messages)
    text = render_chat(template, messages, add_generation_prompt=True, special_tokens=tokenizer.special_tokens)
    return tokenizer.encode(text)


def end_of_turn_ids(tokenizer: Tokenizer) -> set[int]:
    ids = {tokenizer.eos_id}
    hf = getattr(tokenizer, "hf", None)
    for text in END_OF_TURN:
        if hf is not None and text in tokenizer.specials and hf.token_to_id(text) is not None:
            ids.add(hf.token_to_id(text))
    return ids


def cut_at_end_of_turn(row: list[int], ends: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(row):
        if t in ends:
            return row[:i], True
    return row, False


@torch.inference_mode()
def stream_reply(model, tokenizer: Tokenizer, ids: list[int], max_new_tokens: int, rule: DecodeRule,
                 generator: torch.Generator):
    """Yield the reply's text piece by piece as tokens are drawn, for one conversation
    (batch 1: the model's step dominates, so a Python loop costs little here). A piece is
    held back while the decoded text ends in a partial UTF-8 character."""
    from .sampling import _draw, sampling_logprobs

    ends = end_of_turn_ids(tokenizer)
    device = next(model.parameters()).device
    room = max(0, min(max_new_tokens, model.max_len - len(ids)))
    logits, state = model.prefill(torch.tensor([ids], device=device), torch.tensor([len(ids)], device=device),
                                  total_len=len(ids) + room)
    reply, shown = [], ""
    for t in range(room):
        if rule.greedy:
            tok = int(logits.argmax(-1))
        else:
            u = 1.0 - torch.rand(1, 1, generator=generator, device=device)
            tok = int(_draw(sampling_logprobs(logits.float(), rule), u))
        if tok in ends:
            break
        reply.append(tok)
        text = tokenizer.decode(reply)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text
        if t + 1 < room:
            logits, state = model.step(torch.tensor([tok], device=device), state)
    text = tokenizer.decode(reply)
    if len(text) > len(shown):
        yield text[len(shown):]


def sample_strings(model, tokenizer: Tokenizer, n: int, rule: DecodeRule = DecodeRule(), seed: int = 0,
                   device: str | torch.device = "cpu") -> list[str]:
    """n samples from <bos>, in chunks of 1,000 (chunk k seeded seed + 1000 k): what `seqlab
    eval` scores, and what training's in-loop evaluation scores (the same numbers for the
    same checkpoint and seed)."""
    strings: list[str] = []
    for start in range(0, n, 1000):
        with torch.inference_mode():
            strings += sample_text(model, tokenizer, min(1000, n - start), rule=rule, seed=seed + start,
                                   device=device).texts
    return strings
