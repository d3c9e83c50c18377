"""Sampler invariants with mock models whose logits we know exactly (nanochat's habit)."""

import math

import pytest
import torch
from float32_tolerance import float32_bound, scaled_error, transformer_bound

from seqlab.config import ModelConfig
from seqlab.models import build_model
from seqlab.models.base import SeqModel
from seqlab.sampling import DecodeRule, beam_search, generate, sampling_logprobs

V = 10
EOS, PAD = 2, 0


class FixedLogits(SeqModel):
    """Same next-token logits at every step; state counts steps."""

    def __init__(self, logits):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.fixed = torch.as_tensor(logits, dtype=torch.float32)
        self.calls = 0

    def logits(self, idx):
        return self.fixed.expand(*idx.shape, -1)

    def prefill(self, idx, lengths, total_len=None):
        self.calls += 1
        return self.fixed.expand(idx.size(0), -1), torch.zeros(idx.size(0))

    def step(self, tokens, state):
        self.calls += 1
        return self.fixed.expand(tokens.size(0), -1), state + 1

    def select_state(self, state, index):
        return state[index]


def uniform():
    # eos gets -inf so that rows never stop early
    lg = torch.zeros(V)
    lg[EOS] = float("-inf")
    return FixedLogits(lg)


def run(model, rule, seed, n=16, steps=20, prompts=None):
    g = torch.Generator().manual_seed(seed)
    return generate(model, prompts or [[1]] * n, steps, rule, EOS, PAD, generator=g)


def test_same_seed_same_output_and_different_seed_differs():
    m = uniform()
    a, b, c = run(m, DecodeRule(), 0), run(m, DecodeRule(), 0), run(m, DecodeRule(), 1)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def test_temperature_zero_is_seed_independent_and_greedy():
    m = FixedLogits(torch.arange(V, dtype=torch.float32))
    a, b = run(m, DecodeRule(temperature=0), 0), run(m, DecodeRule(temperature=0), 99)
    assert torch.equal(a.tokens, b.tokens)
    assert (a.tokens == V - 1).all()
    assert a.rule == "greedy"


def test_max_length_and_prefix_not_recomputed():
    m = uniform()
    out = run(m, DecodeRule(), 0, n=4, steps=7)
    assert out.tokens.shape == (4, 7) and (out.lengths == 7).all()
    assert m.calls == 7  # 1 prefill + 6 steps: one model call per new token
    for rule in (DecodeRule(), DecodeRule(temperature=0), DecodeRule(top_k=2)):
        empty = run(uniform(), rule, 0, n=3, steps=0)
        assert empty.tokens.shape == empty.model_logprobs.shape == empty.sampling_logprobs.shape == (3, 0)
        assert empty.lengths.tolist() == [0, 0, 0] and empty.rows() == [[], [], []]


def test_eos_stops_rows_and_pads_after():
    lg = torch.full((V,), -1e9)
    lg[EOS] = 0.0  # always eos
    out = run(FixedLogits(lg), DecodeRule(), 0, n=3, steps=10)
    assert out.tokens.shape[1] == 1 and (out.tokens[:, 0] == EOS).all()
    assert out.finished.all() and (out.lengths == 1).all()


class EosAtRowIndex(FixedLogits):
    """Row b emits token 5 until step b, then eos (row `never` never does)."""

    def __init__(self, never):
        super().__init__(torch.zeros(V))
        self.never = never

    def _logits(self, step):
        B = step.size(0)
        lg = torch.full((B, V), -1e9)
        ends = (step == torch.arange(B)) & (torch.arange(B) != self.never)
        lg[:, 5] = 0.0
        lg[ends, 5], lg[ends, EOS] = -1e9, 0.0
        return lg

    def prefill(self, idx, lengths, total_len=None):
        self.calls += 1
        state = torch.zeros(idx.size(0), dtype=torch.long)
        return self._logits(state), state

    def step(self, tokens, state):
        self.calls += 1
        return self._logits(state + 1), state + 1


def test_rows_ending_at_different_steps_are_padded_and_the_loop_stops_early():
    from seqlab.sampling import EOS_CHECK

    # distinct prompts: the mock's logits depend on the row index, so rows must not share a prefill
    m = EosAtRowIndex(never=99)
    out = run(m, DecodeRule(), 0, steps=40, prompts=[[1, 3 + b] for b in range(4)])
    assert out.lengths.tolist() == [1, 2, 3, 4] and out.finished.all()
    assert out.tokens.shape == (4, 4)  # trimmed to the longest row
    for b in range(4):
        assert out.tokens[b, :b].eq(5).all() and out.tokens[b, b] == EOS and out.tokens[b, b + 1:].eq(PAD).all()
        assert out.model_logprobs[b, b + 1:].eq(0).all() and out.model_logprobs[b, :b + 1].abs().max() < 1e-6
    assert m.calls == EOS_CHECK  # every row ended by the first check: no step beyond it
    m = EosAtRowIndex(never=1)
    out = run(m, DecodeRule(temperature=0), 0, steps=12, prompts=[[1, 3 + b] for b in range(3)])
    assert out.finished.tolist() == [True, False, True] and out.lengths.tolist() == [1, 12, 3]
    assert out.tokens[1].eq(5).all() and out.tokens[2, 3:].eq(PAD).all() and m.calls == 12


@pytest.mark.parametrize("rule,allowed", [
    (DecodeRule(top_k=3), {7, 8, 9}),
    (DecodeRule(top_p=0.5), None),
    (DecodeRule(min_p=0.2), None),
    (DecodeRule(temperature=0.7, top_k=4, top_p=0.9), None),
])
def test_truncation_never_emits_excluded_tokens(rule, allowed):
    logits = torch.tensor([-9.0, -9.0, -9.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    probs = (logits / rule.temperature).softmax(-1)
    if allowed is None:
        allowed = {i for i in range(V) if sampling_logprobs(logits[None], rule)[0, i] > float("-inf")}
    if rule.top_p is not None and rule.top_k is None:
        # nucleus by hand: smallest top set with mass >= p
        order = probs.argsort(descending=True).tolist()
        keep, mass = set(), 0.0
        for i in order:
            keep.add(i)
            mass += probs[i].item()
            if mass >= rule.top_p:
                break
        assert allowed == keep
    if rule.min_p is not None and rule.top_k is None:
        assert allowed == {i for i in range(V) if probs[i] >= rule.min_p * probs.max()}
    out = run(FixedLogits(logits), rule, 0, n=64, steps=30)
    emitted = set(out.tokens.unique().tolist())
    assert emitted <= allowed
    assert len(emitted) == len(allowed)  # and each allowed token does occur


def test_inverse_cdf_draw_never_picks_an_excluded_token_at_the_ends_of_the_unit_interval():
    from seqlab.sampling import _draw

    logits = torch.tensor([[float("-inf"), float("-inf"), 0.0, 1.0, float("-inf"), 2.0, float("-inf")]])
    lp = logits.log_softmax(-1)
    p = lp.exp()[0]
    for u, want in [(2.0 ** -24, 2), (1.0, 5), (float(p[2]) * 0.999, 2), (float(p[2] + p[3]) * 1.001, 5)]:
        assert _draw(lp, torch.tensor([[u]])).item() == want, u
    # u = 0 is never passed (generate draws 1 - rand); even then only token 0 could go wrong
    us = torch.rand(20000, 1, generator=torch.Generator().manual_seed(0)) + 2.0 ** -24
    toks = _draw(lp.expand(20000, -1), us.clamp(max=1.0)).squeeze(1)
    assert set(toks.tolist()) == {2, 3, 5}
    freq = torch.bincount(toks, minlength=7).float() / 20000
    assert torch.allclose(freq, p, atol=0.015)


def test_a_zero_uniform_from_the_generator_cannot_draw_an_excluded_token(monkeypatch):
    # torch.rand returns exactly 0 with probability 2^-24 per draw (thousands of draws per call)
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.zeros(*shape))
    logits = torch.arange(V, dtype=torch.float32)  # token 0 (pad) is the least likely
    out = run(FixedLogits(logits), DecodeRule(top_k=3), 0, n=4, steps=5)
    assert out.tokens.ge(V - 3).all()
    assert torch.isfinite(out.sampling_logprobs).all()


def test_logprobs_of_uniform_and_of_truncated_distribution():
    out = run(uniform(), DecodeRule(), 0, n=4, steps=5)
    # V - 1 tokens share the mass (eos is -inf)
    assert torch.allclose(out.model_logprobs, torch.full((4, 5), -math.log(V - 1)))
    assert torch.allclose(out.sampling_logprobs, out.model_logprobs)
    out = run(uniform(), DecodeRule(top_k=3), 0, n=4, steps=5)
    assert torch.allclose(out.sampling_logprobs, torch.full((4, 5), -math.log(3)))
    assert torch.allclose(out.model_logprobs, torch.full((4, 5), -math.log(V - 1)))
    assert "top_k=3" in out.rule


def test_logprobs_match_real_model_forward():
    torch.manual_seed(0)
    m = build_model(ModelConfig(type="transformer", block_size=24, n_embd=16, n_head=2, n_layer=2), V).eval()
    prompts = [[1, 5], [1], [1, 4, 6, 3]]
    out = generate(m, prompts, 8, DecodeRule(temperature=1.0), EOS, PAD, generator=torch.Generator().manual_seed(0))
    for b, p in enumerate(prompts):
        n = int(out.lengths[b])
        seq = torch.tensor(p + out.tokens[b, :n].tolist())
        logits, _ = m(seq[:-1].unsqueeze(0))
        lp = logits[0].log_softmax(-1)[len(p) - 1:].gather(1, seq[len(p):, None]).squeeze(1)
        assert scaled_error(out.model_logprobs[b, :n], lp) <= transformer_bound(m) + float32_bound(V)


def test_prompt_longer_than_context_is_refused():
    m = build_model(ModelConfig(type="transformer", block_size=4, n_embd=8, n_head=2, n_layer=1), V)
    from seqlab.errors import SeqlabError

    with pytest.raises(SeqlabError, match="does not fit"):
        generate(m, [[1, 3, 4, 5, 6]], 3)


def test_generation_fits_the_context():
    m = build_model(ModelConfig(type="transformer", block_size=6, n_embd=8, n_head=2, n_layer=1), V)
    out = generate(m, [[1, 3]], 100, eos_id=-1)
    assert out.tokens.shape[1] == 5  # 2 prompt + 5 new = 7 tokens: the last needs no cache slot


def test_beam_search_finds_the_best_sequence():
    """Two-step toy: greedy picks token 3 first (p=.5) but the best pair starts with 4.

    After 3: next is uniform over 9 tokens (p=1/9 each, incl. eos); after 4: eos with p=.9.
    Best full path: 4, eos with p = .4 * .9 = .36 > .5 * 1/9.
    """

    class Toy(FixedLogits):
        def __init__(self):
            super().__init__(torch.zeros(V))

        def prefill(self, idx, lengths, total_len=None):
            first = torch.full((V,), -1e9)
            first[3], first[4], first[5] = math.log(.5), math.log(.4), math.log(.1)
            return first.expand(idx.size(0), -1), torch.zeros(idx.size(0), dtype=torch.long)

        def step(self, tokens, state):
            out = torch.full((tokens.size(0), V), math.log(1 / 9))
            out[:, PAD] = -1e9
            four = tokens == 4
            out[four] = -1e9
            out[four, EOS] = math.log(.9)
            out[four, 6] = math.log(.1)
            return out, state + 1

    out = beam_search(Toy(), [[1]], 3, beam_width=2, eos_id=EOS, pad_id=PAD)
    assert out.tokens[0, :2].tolist() == [4, EOS]
    assert out.model_logprobs.sum().item() == pytest.approx(math.log(.36), abs=1e-5)
    greedy = beam_search(Toy(), [[1]], 3, beam_width=1, eos_id=EOS, pad_id=PAD)
    assert greedy.tokens[0, 0].item() == 3
    two = beam_search(Toy(), [[1], [1]], 3, beam_width=2, eos_id=EOS, pad_id=PAD, top=2)  # prompt-major rows
    totals = two.total_logprob()
    assert two.tokens.size(0) == 4 and two.tokens[0, :2].tolist() == [4, EOS] and two.tokens[2, 0].item() == 4
    assert totals[0] >= totals[1] and totals[1] == pytest.approx(math.log(.5 / 81), abs=1e-5)  # 3, then 2 of 1/9
    # one step from one live beam reaches only 3 tokens with finite log-prob (3, 4, 5): no dead beams returned
    class Sparse(Toy):  # impossible first tokens at -inf, not -1e9
        def prefill(self, idx, lengths, total_len=None):
            first, state = super().prefill(idx, lengths, total_len)
            return first.masked_fill(first < -1e8, float("-inf")), state

    short = beam_search(Sparse(), [[1]], 1, beam_width=8, eos_id=EOS, pad_id=PAD, top=8)
    assert short.tokens[:, 0].tolist() == [3, 4, 5] and bool(torch.isfinite(short.total_logprob()).all())


def test_every_model_type_samples_through_the_same_sampler():
    for typ in ("bigram", "mlp", "rnn", "lstm", "gru", "transformer"):
        torch.manual_seed(0)
        m = build_model(ModelConfig(type=typ, block_size=12, n_embd=8, n_head=2, n_layer=1), V)
        out = generate(m, [[1], [1, 5, 6]], 6, generator=torch.Generator().manual_seed(0))
        assert out.tokens.shape[0] == 2 and out.tokens.shape[1] <= 6
        assert (out.model_logprobs <= 0).all()


def test_repeated_prompts_are_prefilled_once_and_sample_like_distinct_ones(monkeypatch):
    """GRPO-style batches (each prompt G times) prefill the distinct prompts only; each row
    still samples from its own prompt's state, for every kind of model state."""
    for typ, extra in [("transformer", {"pos": "rope"}), ("lstm", {}), ("mlp", {"mlp_context": 3})]:
        torch.manual_seed(0)
        m = build_model(ModelConfig(type=typ, block_size=24, n_embd=16, n_head=2, n_layer=2, **extra), V).eval()
        seen = []
        real = type(m).prefill
        monkeypatch.setattr(type(m), "prefill", lambda self, idx, lengths, total_len=None:
                            seen.append(idx.size(0)) or real(self, idx, lengths, total_len))
        prompts = [[1, 5], [1], [1, 4, 6, 3]] * 4
        out = generate(m, prompts, 8, DecodeRule(), EOS, PAD, generator=torch.Generator().manual_seed(0))
        assert seen == [3]
        for b, p in enumerate(prompts):  # log-probs are those of the row's own prompt + continuation
            n = int(out.lengths[b])
            seq = torch.tensor(p + out.tokens[b, :n].tolist())
            logits, _ = m(seq[:-1].unsqueeze(0))
            lp = logits[0].log_softmax(-1)[len(p) - 1:].gather(1, seq[len(p):, None]).squeeze(1)
            # recurrent models and the MLP chain a reduction (over at most 4 x 16) per layer and
            # position, up to 12 positions here
            bound = transformer_bound(m) if typ == "transformer" else float32_bound(64, depth=2 * 12 + 1)
            assert scaled_error(out.model_logprobs[b, :n], lp) <= bound + float32_bound(V)
        monkeypatch.undo()


def test_without_a_compiler_sampling_falls_back_to_the_python_step(tmp_path):
    """A failed build warns once, in one line, and sampling still works (subprocess: fresh op registry)."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, warnings\n"
        "from seqlab.config import ModelConfig\n"
        "from seqlab.models import build_model\n"
        "from seqlab.sampling import generate\n"
        # seeded weights: an unseeded model can draw eos in every row and end the batch a step early
        "torch.manual_seed(0)\n"
        "m = build_model(ModelConfig(type='transformer', n_layer=1, n_head=2, n_embd=16, block_size=16), 8)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out = generate(m, [[1]] * 3, 5, generator=torch.Generator().manual_seed(0))\n"
        "    out = generate(m, [[1]] * 3, 5, generator=torch.Generator().manual_seed(0))\n"
        "print('x'.join(map(str, out.tokens.shape)), len(w), str(w[0].message) if w else '', sep='|')\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    shape, n_warnings, message = res.stdout.strip().split("|", 2)
    assert shape == "3x5" and n_warnings == "1"  # one warning for two generations
    assert "native decode step unavailable" in message and "no-such-compiler" in message
