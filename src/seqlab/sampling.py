"""One batched sampler for every model in the zoo.

It uses only the model contract (prefill / step / select_state), so the prefix
is never recomputed: each new token costs one incremental step.

Decoding rules (applied in this order, as in Hugging Face `generate`):
temperature (0 means greedy), top-k, top-p (nucleus), min-p; and beam search.

Every result carries two per-token log-probabilities of the chosen tokens:
  model_logprobs    under the model itself (temperature 1, nothing truncated);
  sampling_logprobs under the distribution that actually drew the token (after
                    temperature and truncation; 0 for greedy, which is a point mass).
Post-training needs the second for importance ratios and the first for
likelihoods; `rule` says which decoding rule produced them.

On a CPU the hot loop runs in C++ where it can (models/native.py): the transformer's
step, the draw for rules that truncate nothing (plain sampling, temperature only), and,
for those rules on the transformer's native step, the whole loop in one call. The Python
code below is the reference they are tested against.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import SeqlabError
from .models import native


@dataclass(frozen=True)
class DecodeRule:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise SeqlabError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise SeqlabError(f"top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SeqlabError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise SeqlabError(f"min-p must be in [0, 1], got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def truncates(self) -> bool:
        """True when some tokens the model allows can never be drawn."""
        return self.top_k is not None or (self.top_p is not None and self.top_p < 1) or bool(self.min_p)

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        parts = [f"temperature={self.temperature:g}"]
        if self.top_k is not None:
            parts.append(f"top_k={self.top_k}")
        if self.top_p is not None:
            parts.append(f"top_p={self.top_p:g}")
        if self.min_p:
            parts.append(f"min_p={self.min_p:g}")
        return "sample(" + ", ".join(parts) + ")"


def sampling_logprobs(logits: torch.Tensor, rule: DecodeRule) -> torch.Tensor:
    """Log-probs (B, V) of the distribution `rule` draws from; -inf where excluded."""
    logits = logits.float()
    if rule.temperature != 1.0:
        logits = logits / rule.temperature
    if rule.top_k is not None and rule.top_k < logits.size(-1):
        # exactly k tokens survive, even when logits tie (a `< kth value` test would keep all ties)
        keep = torch.topk(logits, rule.top_k, dim=-1).indices
        logits = torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))
    if rule.top_p is not None and rule.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop_sorted = (probs.cumsum(-1) - probs) >= rule.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if rule.min_p:
        probs = logits.softmax(-1)
        floor = rule.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits.log_softmax(-1)


EOS_CHECK = 8  # generate() tests whether every row has ended every this many steps


@dataclass
class Generation:
    """Generated continuations, right-padded with pad_id after each row's end."""

    tokens: torch.Tensor  # (B, L) new tokens, eos included when produced
    lengths: torch.Tensor  # (B,) number of new tokens per row (eos included)
    model_logprobs: torch.Tensor  # (B, L), 0 on padding
    sampling_logprobs: torch.Tensor  # (B, L), 0 on padding
    finished: torch.Tensor  # (B,) True where the row ended with eos
    rule: str

    def rows(self, strip_eos: bool = True) -> list[list[int]]:
        out = []
        for b in range(self.tokens.size(0)):
            n = int(self.lengths[b]) - (1 if strip_eos and bool(self.finished[b]) else 0)
            out.append(self.tokens[b, :n].tolist())
        return out

    def total_logprob(self) -> torch.Tensor:
        return self.model_logprobs.sum(-1)


def _draw(logprobs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row from exp(logprobs) by inverse CDF, given one uniform per row
    in (0, 1]: uniform (B, 1) -> token ids (B, 1).

    Token i is drawn when cdf[i-1] < u * total <= cdf[i] (searchsorted's left side),
    an empty interval for a zero-probability token. That is why u must not be 0 (it
    would pick token 0 even when excluded) and may be 1 (the last allowed token):
    generate() passes 1 - torch.rand(). Scaling u by the row's total keeps this exact
    when the cumulative sum rounds away from 1.
    The uniforms for the whole generation are drawn in one call up front:
    per-step torch.multinomial (or exponential_) costs several times more than
    these few ops for small batches on a CPU (benchmarks/results.md).
    """
    cdf = logprobs.exp().cumsum(-1)
    return torch.searchsorted(cdf, uniform * cdf[:, -1:])


def _prompt_batch(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise SeqlabError("every prompt needs at least one token (the <bos> token)")
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    idx = torch.full((len(prompts), int(lengths.max())), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        idx[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    return idx.to(device), lengths.to(device)


def distinct_prompts(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts in first-seen order, and for each row the index of its prompt among them."""
    first: dict[tuple, int] = {}
    row_of = [first.setdefault(tuple(p), len(first)) for p in prompts]
    return [list(p) for p in first], row_of


def _budget(model, prompts, max_new_tokens: int) -> int:
    if model.max_len is None:
        return max_new_tokens
    room = model.max_len - max(len(p) for p in prompts)
    if room < 0:
        raise SeqlabError(
            f"prompt of {max(len(p) for p in prompts)} tokens does not fit the model's context ({model.max_len})"
        )
    return min(max_new_tokens, room + 1)  # the last token needs no cache slot


@torch.inference_mode()
def generate(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    rule: DecodeRule = DecodeRule(),
    eos_id: int = 2,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    shard: slice | None = None,
) -> Generation:
    """Sample continuations of `prompts` (token-id lists, bos included) in one batch.

    `shard`: sample only these rows of `prompts` (a data-parallel rank's share); the random
    numbers are drawn for every row, so a row's sample does not depend on how the rows
    are split over processes."""
    device = next(model.parameters()).device
    if device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # under bf16 autocast (post.dtype) CPU sampling runs the native step (the autocast
        # Python path is slower: a SmolLM2 GRPO rollout took 28 s against 20) with its
        # matmuls in bf16 (native.bf16_weights); the prefill and the KV cache stay float32
        low = torch.get_autocast_dtype("cpu") == torch.bfloat16
        with torch.autocast("cpu", enabled=False), (native.bf16_weights() if low else contextlib.nullcontext()):
            return generate(model, prompts, max_new_tokens, rule, eos_id, pad_id, generator, shard)
    steps = _budget(model, prompts, max_new_tokens)
    plain = not rule.truncates and rule.temperature == 1.0
    # in (0, 1], see _draw; (steps, B, 1), one column of uniforms per step. Drawn where the
    # generator lives (a CPU generator for a CUDA model: the same draws on every device) and
    # moved once to the model's device
    uniform_table = None if rule.greedy else 1.0 - torch.rand(
        steps, len(prompts), 1, generator=generator,
        device=generator.device if generator is not None else device).to(device)
    if shard is not None:
        prompts = prompts[shard]
        uniform_table = None if uniform_table is None else uniform_table[:, shard].contiguous()
    idx, lengths = _prompt_batch(prompts, pad_id, device)
    B = idx.size(0)
    was_training = model.training
    model.eval()
    # the last token needs no cache slot: prompt + steps - 1 positions are written
    total_len = idx.size(1) + steps - 1
    distinct, row_of = distinct_prompts(prompts)
    # e.g. GRPO's G samples per prompt: prefill each prompt once, then copy its state (not for
    # a decoder bound to one source per row: equal prompts, different sources)
    if len(distinct) < B and not getattr(model, "conditioned", False):
        logits, state = model.prefill(*_prompt_batch(distinct, pad_id, device), total_len=total_len)
        rows = torch.tensor(row_of, device=device)
        logits, state = logits[rows], model.select_state(state, rows)
    else:
        logits, state = model.prefill(idx, lengths, total_len=total_len)
    # The loop only draws and records (into lists of (B, 1) columns, joined once): a row
    # that emitted eos keeps being stepped (its tokens are masked after the loop; rows
    # never interact), and whether every row has finished is checked every EOS_CHECK
    # steps. Both keep per-token bookkeeping ops (a large share of a small model's step)
    # out of the hot loop.
    cols, model_cols, sample_cols = [], [], []
    upcast = logits.dtype != torch.float32
    # rules that truncate nothing draw in one native call (models/native.py) when available
    draw_native = None if rule.greedy or rule.truncates else native.sampler(logits)
    native_step = getattr(state, "native", None)
    if draw_native is not None and native_step is not None and steps > 0:
        # the transformer's native step too: the whole loop below in one C++ call
        tok, model_lp, sample_lp = native.loop(native_step, logits, uniform_table, rule.temperature, eos_id,
                                               EOS_CHECK, state)
        cols, model_cols, sample_cols = [tok], [model_lp], [sample_lp]
    else:
        uniforms = None if rule.greedy else uniform_table.unbind(0)  # (B, 1) views, split off once
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(steps):
            if draw_native is not None:
                col, model_col, sample_col = draw_native(logits, uniforms[t], rule.temperature)
            else:
                lp = (logits.float() if upcast else logits).log_softmax(-1)  # (B, V) the model's own distribution
                if rule.greedy:
                    col = lp.argmax(-1, keepdim=True)  # (B, 1)
                else:
                    slp = lp if plain else sampling_logprobs(logits, rule)
                    col = _draw(slp, uniforms[t])
                    sample_col = None if plain else slp.gather(1, col)
                model_col = lp.gather(1, col)
            model_cols.append(model_col)
            if not plain and not rule.greedy:  # plain sampling: the two log-probs are the same numbers
                sample_cols.append(sample_col)
            cols.append(col)
            if t + 1 == steps:
                break
            if eos_id >= 0 and (t + 1) % EOS_CHECK == 0:
                finished |= (torch.cat(cols[-EOS_CHECK:], 1) == eos_id).any(1)
                if bool(finished.all()):
                    break
            logits, state = model.step(col.view(-1), state)
    model.train(was_training)
    if not cols:  # max_new_tokens = 0
        cols = [idx.new_full((B, 0), pad_id)]
        model_cols = sample_cols = [torch.zeros(B, 0, device=device)]
    tokens, model_lp = torch.cat(cols, 1), torch.cat(model_cols, 1)
    L = tokens.size(1)
    is_eos = tokens == eos_id
    after_eos = is_eos.cumsum(1) > is_eos.long()  # strictly after the row's first eos
    n_new = L - after_eos.sum(1)
    L = int(n_new.max())  # rows finished before the last check leave all-pad columns
    after_eos = after_eos[:, :L]
    model_lp = model_lp[:, :L].masked_fill(after_eos, 0.0)
    if rule.greedy:
        sample_lp = torch.zeros_like(model_lp)  # a point mass
    elif plain:
        sample_lp = model_lp
    else:
        sample_lp = torch.cat(sample_cols, 1)[:, :L].masked_fill(after_eos, 0.0)
    return Generation(tokens[:, :L].masked_fill(after_eos, pad_id), n_new, model_lp, sample_lp,
                      is_eos.any(1), rule.describe())


@torch.inference_mode()
def beam_search(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    beam_width: int,
    eos_id: int = 2,
    pad_id: int = 0,
    length_penalty: float = 0.0,
    top: int = 1,
) -> Generation:
    """The `top` highest-scoring continuations per prompt by beam search (at most
    beam_width, and at most the number of live beams, e.g. with a tiny vocabulary;
    rows prompt-major, best first).

    Score = sum of model log-probs / (number of new tokens) ** length_penalty
    (0 ranks by total log-prob). A beam that emits eos is frozen and competes
    with the live ones until the end.
    """
    if beam_width < 1:
        raise SeqlabError(f"beam width must be >= 1, got {beam_width}")
    device = next(model.parameters()).device
    idx, lengths = _prompt_batch(prompts, pad_id, device)
    B, W = idx.size(0), beam_width
    steps = _budget(model, prompts, max_new_tokens)
    was_training = model.training
    model.eval()
    logits, state = model.prefill(idx, lengths, total_len=idx.size(1) + steps - 1)
    V = logits.size(-1)
    rows = torch.arange(B, device=device).repeat_interleave(W)
    state = model.select_state(state, rows)
    logits = logits[rows]
    # Only beam 0 is live at the start, so the first expansion is not W copies.
    score = torch.full((B, W), float("-inf"), device=device)
    score[:, 0] = 0.0
    hist = torch.full((B, W, 0), pad_id, dtype=torch.long, device=device)
    hist_lp = torch.zeros(B, W, 0, device=device)
    frozen = torch.zeros(B, W, dtype=torch.bool, device=device)
    length = torch.zeros(B, W, device=device)
    frozen_row = torch.full((V,), float("-inf"), device=device)
    frozen_row[pad_id] = 0.0
    for t in range(steps):
        lp = logits.float().log_softmax(-1).view(B, W, V)
        lp = torch.where(frozen.unsqueeze(-1), frozen_row, lp)
        total = score.unsqueeze(-1) + lp  # (B, W, V)
        new_len = (length + (~frozen).float()).unsqueeze(-1).expand(B, W, V)
        ranked = total / new_len.clamp(min=1) ** length_penalty if length_penalty else total
        best = ranked.view(B, W * V).topk(W, dim=-1).indices  # (B, W)
        beam, tok = best // V, best % V
        score = total.view(B, W * V).gather(1, best)
        step_lp = lp.view(B, W * V).gather(1, best)
        length = new_len.reshape(B, W * V).gather(1, best)
        was_frozen = frozen.gather(1, beam)
        hist = torch.cat([hist.gather(1, beam.unsqueeze(-1).expand_as(hist)), tok.unsqueeze(-1)], dim=-1)
        hist_lp = torch.cat([hist_lp.gather(1, beam.unsqueeze(-1).expand_as(hist_lp)),
                             step_lp.masked_fill(was_frozen, 0).unsqueeze(-1)], dim=-1)
        frozen = was_frozen | (tok == eos_id)
        if t + 1 == steps or bool(frozen.all()):
            break
        flat = (torch.arange(B, device=device).unsqueeze(1) * W + beam).view(-1)
        state = model.select_state(state, flat)
        logits, state = model.step(tok.view(-1), state)
    model.train(was_training)
    final = score / length.clamp(min=1) ** length_penalty if length_penalty else score
    live = int(torch.isfinite(final).sum(-1).min())  # beams never filled stay at -inf
    k = max(1, min(top, W, live))
    pick = final.topk(k, dim=-1).indices  # (B, k), best first
    ar = torch.arange(B, device=device).unsqueeze(1)
    toks, tok_lp = hist[ar, pick].flatten(0, 1), hist_lp[ar, pick].flatten(0, 1)
    n = length[ar, pick].flatten().long()
    finished = (toks == eos_id).any(-1)
    return Generation(toks, n, tok_lp, torch.zeros_like(tok_lp), finished,
                      f"beam(width={W}, length_penalty={length_penalty:g})")
