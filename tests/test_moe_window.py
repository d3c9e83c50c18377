"""Mixture-of-experts MLPs and sliding-window attention (issue 20, item 3)."""

import pytest
import torch
import torch.nn.functional as F

from seqlab.config import ModelConfig, RunConfig, _validate
from seqlab.errors import SeqlabError
from seqlab.models import build_model, native
from seqlab.models.layers import GeluMLP
from seqlab.models.moe import MoE, load_balancing_loss


def transformer(**kw):
    torch.manual_seed(0)
    cfg = dict(type="transformer", n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.0)
    return build_model(ModelConfig(**{**cfg, **kw}), 11).eval()


# ------------------------------------------------------------------ mixture of experts


def test_one_expert_is_the_dense_mlp():
    torch.manual_seed(0)
    dense = GeluMLP(16, 64, False, 0.0)
    moe = MoE(lambda: GeluMLP(16, 64, False, 0.0), 16, n_experts=1, top_k=1)
    moe.experts[0].load_state_dict(dense.state_dict())
    x = torch.randn(3, 7, 16)
    assert torch.equal(moe(x), dense(x))


def hand_moe(n_experts, top_k):
    """An MoE whose router gives known probabilities for three tokens x = e_0, e_1, e_2:
    logits = log of the rows of P (so softmax(logits) = P), experts that scale by e + 1."""
    P = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])[:, :n_experts]
    P = P / P.sum(-1, keepdim=True)

    class Scale(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x):
            return self.c * x

    scales = iter(range(1, n_experts + 1))
    moe = MoE(lambda: Scale(float(next(scales))), 3, n_experts, top_k)
    with torch.no_grad():
        moe.router.weight.copy_(P.log().T)  # x = e_i picks row i of P's logs
    return moe, P, torch.eye(3)


def test_top1_gate_is_the_chosen_experts_probability():
    moe, P, x = hand_moe(3, 1)
    out = moe.mix(x)
    # token 0 -> expert 0 (p .5, scale 1); token 1 -> expert 1 (p .6, scale 2); token 2 -> expert 2 (p .5, scale 3)
    want = torch.stack([0.5 * 1 * x[0], 0.6 * 2 * x[1], 0.5 * 3 * x[2]])
    assert torch.allclose(out, want, atol=1e-6)
    assert moe.routing[1].view(-1).tolist() == [0, 1, 2]


def test_top2_gates_are_renormalised():
    moe, P, x = hand_moe(3, 2)
    out = moe.mix(x)
    # token 0: experts 0 (.5) and 1 (.3) -> weights .625 / .375, scales 1 and 2
    # token 1: experts 1 (.6) and 2 (.3) -> 2/3 and 1/3, scales 2 and 3
    # token 2: expert 2 (.5) and a tie of .25 between 0 and 1 (topk keeps one): .5 / .75 and .25 / .75
    w0 = 0.625 * 1 + 0.375 * 2
    w1 = (2 / 3) * 2 + (1 / 3) * 3
    second = int(moe.routing[1][2, 1])
    w2 = (0.5 / 0.75) * 3 + (0.25 / 0.75) * (second + 1)
    assert torch.allclose(out, torch.stack([w0 * x[0], w1 * x[1], w2 * x[2]]), atol=1e-6)


def test_load_balancing_loss_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    chosen = torch.tensor([[0], [1], [0]])
    aux, counts = load_balancing_loss(probs, chosen)
    # f = (2/3, 1/3), P = (2/3, 1/3): 2 * (4/9 + 1/9) = 10/9
    assert counts.tolist() == [2.0, 1.0]
    assert aux.item() == pytest.approx(10 / 9, rel=1e-6)
    uniform = torch.full((4, 2), 0.5)
    assert load_balancing_loss(uniform, torch.tensor([[0], [1], [0], [1]]))[0].item() == pytest.approx(1.0)


def test_training_loss_adds_the_aux_loss_over_real_tokens_only():
    m = transformer(moe_experts=4, moe_top_k=1, moe_aux_coef=0.5).train()
    x = torch.randint(0, 11, (2, 9))
    y = torch.randint(0, 11, (2, 9))
    y[1, 5:] = -1  # padding
    logits, loss = m(x, y)
    ce = F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1), ignore_index=-1)
    real = (y != -1).reshape(-1)
    aux = torch.stack([load_balancing_loss(p[real], c[real])[0] for p, c in (layer.routing for layer in m.moe_layers)]).mean()
    assert loss.item() == pytest.approx((ce + 0.5 * aux).item(), rel=1e-6)
    _, loss_sum = m(x, y, loss_reduction="sum")  # the trainer's form: sum / count == mean
    assert (loss_sum / real.sum()).item() == pytest.approx(loss.item(), rel=1e-5)
    stats = m.moe_stats()
    usage = [[float(u) for u in layer.split()] for layer in stats["expert_usage"].split(" / ")]
    assert len(usage) == 2 and all(len(u) == 4 and abs(sum(u) - 1) < 2e-3 for u in usage)
    assert stats["moe_aux"] == pytest.approx(aux.item(), rel=1e-5)  # the mean over the two calls, both this aux
    assert m.moe_stats() == {}  # read and reset
    m.eval()
    _, val = m(x, y)
    assert val.item() == pytest.approx(ce.item(), rel=1e-6)  # evaluation reports the plain loss


def test_moe_padding_invariance_and_cached_decoding():
    m = transformer(moe_experts=3, moe_top_k=2)
    x = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        full = m.logits(x)
        alone = m.logits(x[:1, :7])
        assert torch.allclose(full[:1, :7], alone, atol=1e-5)
        logits, cache = m.prefill(x[:, :4], torch.tensor([4, 4]))
        assert cache.native is None  # decode.cpp runs dense MLPs only
        got = [logits]
        for t in range(4, 11):
            logits, cache = m.step(x[:, t], cache)
            got.append(logits)
    assert torch.allclose(torch.stack(got, 1), full[:, 3:11], atol=1e-5)


def test_config_rejects_bad_moe_keys():
    cfg = RunConfig(model=ModelConfig(moe_experts=2, moe_top_k=3))
    with pytest.raises(SeqlabError, match="model.moe_top_k"):
        _validate(cfg)
    with pytest.raises(SeqlabError, match="model.attention_window"):
        _validate(RunConfig(model=ModelConfig(attention_window=-1)))


# ------------------------------------------------------------------ sliding window


@pytest.mark.parametrize("native_attention", [True, False])
def test_window_covering_the_sequence_is_full_attention(monkeypatch, native_attention):
    if not native_attention:
        monkeypatch.setattr(native, "attention_applies", lambda q, upcast=False: False)
    x = torch.randint(0, 11, (3, 20))
    with torch.no_grad():
        full = transformer().logits(x)
        covered = transformer(attention_window=20).logits(x)
        narrow = transformer(attention_window=5).logits(x)
    assert torch.allclose(full, covered, atol=1e-6)
    assert torch.allclose(full[:, :5], narrow[:, :5], atol=1e-6)  # the first 5 queries see everything
    assert not torch.allclose(full[:, 5:], narrow[:, 5:], atol=1e-3)


def test_window_masks_exactly_window_keys():
    m = transformer(attention_window=4)
    with torch.no_grad():
        maps = m.attention_maps(torch.randint(0, 11, (2, 12)))
    for att in maps:  # (B, H, T, T)
        seen = att > 0
        for i in range(12):
            assert seen[..., i, :].sum(-1).eq(min(i + 1, 4)).all()
            assert seen[..., i, max(0, i - 3): i + 1].all()


@pytest.mark.parametrize("native_attention", [True, False])
def test_native_window_equals_sdpa_with_the_band_mask(monkeypatch, native_attention):
    m = transformer(attention_window=6)
    x = torch.randint(0, 11, (2, 30))
    if not native_attention:
        monkeypatch.setattr(native, "attention_applies", lambda q, upcast=False: False)
    elif native.load() is None:
        pytest.skip("no C++ compiler")
    y = torch.randint(0, 11, (2, 30))
    m.train()
    _, loss = m(x, y)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    # reference: the band mask spelled out, through SDPA, for every layer
    monkeypatch.setattr(native, "attention_applies", lambda q, upcast=False: False)
    i = torch.arange(30)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - 6)
    ref_starts = (i - 5).clamp(min=0).to(torch.int32).expand(2, 30)
    assert torch.equal(native.segment_mask(ref_starts)[0, 0], band)
    _, ref = m(x, y)
    ref_grads = torch.autograd.grad(ref, list(m.parameters()))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() <= 1e-4 * r.abs().max() + 1e-7


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_windowed_cache_decodes_the_full_forward(pos):
    W = 5
    m = transformer(attention_window=W, pos=pos)
    x = torch.randint(0, 11, (3, 40))
    lengths = torch.tensor([9, 3, 6])  # prompts of different lengths, longer and shorter than W
    with torch.no_grad():
        logits, cache = m.prefill(x[:, :9], lengths)
        assert cache.window == W and cache.k[0].size(2) == W  # the ring: memory of the window only
        got = [[logits[b]] for b in range(3)]
        nxt = [x[b, lengths[b]: lengths[b] + 20] for b in range(3)]
        for t in range(20):
            logits, cache = m.step(torch.stack([n[t] for n in nxt]), cache)
            for b in range(3):
                got[b].append(logits[b])
        for b in range(3):
            L = int(lengths[b])
            want = m.logits(x[b: b + 1, : L + 20])[0, L - 1: L + 20]
            assert torch.allclose(torch.stack(got[b]), want, atol=1e-5), b


def test_windowed_packed_training_equals_padded():
    from seqlab.data.lines import encode_lines
    from seqlab.data.tokenizer import CharTokenizer

    g = torch.Generator().manual_seed(1)
    lines = ["".join("ab"[int(c)] for c in torch.randint(0, 2, (int(n),), generator=g))
             for n in torch.randint(3, 25, (12,), generator=g)]
    tok = CharTokenizer.train(lines)
    enc = encode_lines(lines, tok, block_size=26)
    torch.manual_seed(0)
    m = build_model(ModelConfig(type="transformer", n_layer=2, n_head=2, n_embd=32, block_size=26, dropout=0.0,
                                attention_window=7), tok.vocab_size)
    idx = torch.arange(12)
    x, y = enc.batch(idx, tok.pad_id)
    _, loss = m(x, y, loss_reduction="sum")
    xp, yp, positions, starts = enc.packed_batch(idx, tok.pad_id, m.packed_width(x.size(1)))
    _, loss_p = m(xp, yp, loss_reduction="sum", positions=positions, starts=starts)
    assert loss_p.item() == pytest.approx(loss.item(), rel=1e-5)


def test_windowed_continuation_logits_equal_the_full_forward():
    """GRPO's shared-prefix forward (continuation_logits) under a sliding window."""
    m = transformer(attention_window=4)
    prefix = torch.randint(0, 11, (2, 7))
    prefix_len = torch.tensor([7, 5])
    rows = torch.tensor([0, 1, 1])
    suffix = torch.randint(0, 11, (3, 6))
    with torch.no_grad():
        got = m.continuation_logits(prefix, prefix_len, rows, suffix)
        for b in range(3):
            p = int(prefix_len[rows[b]])
            seq = torch.cat([prefix[rows[b], :p], suffix[b]])[None]
            want = m.logits(seq)[0, p - 1: p - 1 + 6]
            assert torch.allclose(got[b], want, atol=1e-5), b


@pytest.mark.parametrize("lengths", [[12, 12], [12, 5]])
def test_windowed_sampling_native_loop_equals_the_python_loop(monkeypatch, lengths):
    """generate() on a ring cache: decode.cpp's loop (window slots, key-mask updates) draws the
    same tokens with the same log-probs as the Python step."""
    from seqlab.sampling import generate

    if native.load() is None:
        pytest.skip("no C++ compiler")
    m = transformer(attention_window=6)
    g = torch.Generator().manual_seed(3)
    prompts = [[1] + torch.randint(3, 11, (n - 1,), generator=g).tolist() for n in lengths]

    def run():
        return generate(m, prompts, 40, eos_id=-1, generator=torch.Generator().manual_seed(0))

    fast = run()
    monkeypatch.setattr(native, "pack", lambda model, rows=None: None)
    slow = run()
    assert torch.equal(fast.tokens, slow.tokens)
    assert torch.allclose(fast.model_logprobs, slow.model_logprobs, atol=1e-5)
