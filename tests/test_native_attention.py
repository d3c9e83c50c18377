"""The native causal attention (forward and backward) against scaled_dot_product_attention."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from float32_tolerance import float32_bound

from seqlab.config import ModelConfig
from seqlab.models import build_model, native

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: seqlab runs scaled_dot_product_attention")

SHAPES = [  # B, H, Hkv, T, D
    (2, 4, 4, 66, 16),  # the GRPO benchmark's heads
    (3, 4, 2, 17, 8),  # grouped-query attention, the smallest head size
    (2, 2, 1, 33, 24),  # multi-query, head size a multiple of 8 but not 16
    (1, 3, 3, 1, 16),  # one token
    (2, 2, 2, 130, 32),  # several key blocks, the last one partial
]


def rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def attention_bound(T, D, backward=False):
    """Float32 rounding of attention (tests/float32_tolerance.py): reductions over D (scores)
    and T (softmax, p.v); the backward adds two more chained reductions (dp, ds)."""
    return float32_bound(max(T, D), depth=5 if backward else 3)


@pytest.mark.parametrize("B,H,Hkv,T,D", SHAPES)
def test_forward_and_backward_match_sdpa_in_float64(B, H, Hkv, T, D):
    g = torch.Generator().manual_seed(T * D + H)
    # scores of a few units, so the softmax is neither flat nor one-hot
    q, k, v = (torch.randn(B, h, T, D, generator=g, dtype=torch.float64) * s
               for h, s in ((H, 1.5), (Hkv, 1.5), (Hkv, 1.0)))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)
    dout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    out = native.causal_attention(q32, k32, v32)
    grads = torch.autograd.grad(out, (q32, k32, v32), dout.float())
    assert out.shape == ref.shape and rel(out, ref) <= attention_bound(T, D)
    for name, got, want in zip("qkv", grads, ref_grads):
        assert got.shape == want.shape
        if T == 1 and name != "v":  # one key: the softmax is constant, so q and k get no gradient
            assert want.abs().max() < 1e-12
            assert got.abs().max() < 1e-6
        else:
            assert rel(got, want) <= attention_bound(T, D, backward=True)


def test_strided_views_of_a_packed_projection():
    """The Transformer hands in q, k, v as transposed views of one (B, T, 3 H D) projection."""
    B, T, H, D = 3, 20, 2, 16
    qkv = torch.randn(B, T, 3 * H * D, requires_grad=True)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=-1))
    assert not q.is_contiguous()
    out = native.causal_attention(q, k, v)
    (out * torch.arange(out.numel()).view(out.shape).sin()).sum().backward()
    qkv2 = qkv.detach().clone().requires_grad_()
    q2, k2, v2 = (t.view(B, T, H, D).transpose(1, 2).contiguous() for t in qkv2.split(H * D, dim=-1))
    ref = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    (ref * torch.arange(ref.numel()).view(ref.shape).sin()).sum().backward()
    assert rel(out, ref) <= attention_bound(T, D) and rel(qkv.grad, qkv2.grad) <= attention_bound(T, D, True)


def test_future_tokens_have_no_influence():
    B, H, T, D = 2, 2, 12, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    out = native.causal_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 7:] += 5.0
    v2[:, :, 7:] -= 3.0
    out2 = native.causal_attention(q, k2, v2)
    assert torch.equal(out[:, :, :7], out2[:, :, :7])
    assert (out[:, :, 7:] - out2[:, :, 7:]).abs().max() > 0.1


@pytest.mark.parametrize("extra", [{}, {"pos": "rope", "n_kv_head": 2, "mlp": "swiglu", "norm": "rmsnorm"}])
def test_training_step_matches_the_sdpa_path(monkeypatch, extra):
    """Loss and every parameter's gradient of a Transformer, native attention vs SDPA."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(type="transformer", block_size=40, n_embd=32, n_head=4, n_layer=2,
                                dropout=0.0, **extra), 13)
    idx = torch.randint(0, 13, (5, 33))

    def loss_and_grads():
        m.zero_grad()
        logits = m.logits(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}

    calls = []
    real = native.causal_attention
    monkeypatch.setattr(native, "causal_attention", lambda *a: calls.append(1) or real(*a))
    loss, grads = loss_and_grads()
    assert len(calls) == 2  # once per layer: the native path really ran
    monkeypatch.setattr(native, "attention_applies", lambda q, upcast=False: False)
    ref_loss, ref_grads = loss_and_grads()
    assert len(calls) == 2
    # forward and backward through 2 layers of 6 chained reductions each and the head; weight
    # gradients sum over the batch's 160 tokens, the longest reduction
    bound = float32_bound(5 * 32, depth=2 * (6 * 2 + 1))
    assert abs(loss - ref_loss) <= bound * abs(ref_loss)
    for name, g in ref_grads.items():
        assert rel(grads[name], g) <= bound, name


def test_sdpa_runs_where_the_native_kernel_does_not_apply(monkeypatch):
    calls = []
    real = native.causal_attention
    monkeypatch.setattr(native, "causal_attention", lambda *a: calls.append(1) or real(*a))
    idx = torch.randint(0, 7, (2, 10))

    def model(**kw):
        cfg = {"type": "transformer", "block_size": 16, "n_embd": 32, "n_head": 4, "n_layer": 1, "dropout": 0.0}
        return build_model(ModelConfig(**{**cfg, **kw}), 7)

    model().logits(idx)
    assert len(calls) == 1
    model(dropout=0.1).train().logits(idx)  # attention dropout in training: SDPA
    model(n_embd=24).logits(idx)  # head size 6
    model().double().logits(idx)  # float64
    model(n_embd=256, block_size=160).logits(torch.randint(0, 7, (1, 160)))  # T x D = 160 x 64: long heads
    m = model().eval()
    with torch.no_grad():  # ragged prompts give an explicit padding mask: SDPA
        m.prefill(idx, torch.tensor([10, 6]))
    assert len(calls) == 1
    model(dropout=0.1).eval().logits(idx)  # dropout is off in eval
    assert len(calls) == 2


def test_unsupported_head_size_is_refused_with_a_clear_message():
    x = torch.randn(1, 1, 4, 12)
    with pytest.raises(RuntimeError, match="head size must be a multiple of 8"):
        native.load().causal_attention(x, x, x, 0.5)


def random_starts(B, T, g):
    """(B, T) int32 segment starts of rows cut at random points into sequences of 1..40."""
    starts = torch.empty(B, T, dtype=torch.int32)
    for b in range(B):
        i = 0
        while i < T:
            n = int(torch.randint(1, 41, (1,), generator=g))
            starts[b, i:i + n] = i
            i += n
    return starts


@pytest.mark.parametrize("B,H,Hkv,T,D", [(2, 4, 4, 130, 16), (3, 4, 2, 67, 8), (2, 2, 1, 45, 24)])
def test_packed_rows_match_sdpa_with_the_segment_mask(B, H, Hkv, T, D):
    """With starts, each query sees only its own sequence's keys: equal to SDPA with the
    block-diagonal causal mask, forward and backward."""
    g = torch.Generator().manual_seed(T + D)
    starts = random_starts(B, T, g)
    assert (starts[:, 1:] > starts[:, :-1]).any()  # more than one sequence in some row
    q, k, v = (torch.randn(B, h, T, D, generator=g, dtype=torch.float64) * s
               for h, s in ((H, 1.5), (Hkv, 1.5), (Hkv, 1.0)))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=native.segment_mask(starts), enable_gqa=H != Hkv)
    dout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    out = native.causal_attention(q32, k32, v32, starts)
    grads = torch.autograd.grad(out, (q32, k32, v32), dout.float())
    assert rel(out, ref) <= attention_bound(T, D)
    for got, want in zip(grads, ref_grads):
        assert rel(got, want) <= attention_bound(T, D, backward=True)
    # a sequence alone (no packing) gives its own rows' outputs
    b, s0 = 0, int(starts[0, -1])
    alone = native.causal_attention(*(t[b:b + 1, :, s0:].detach().float().contiguous() for t in (q, k, v)))
    assert rel(alone, out[b:b + 1, :, s0:].detach().double()) < 1e-6


def test_bf16_autocast_runs_native_attention_in_float32_and_samples_with_bf16_weights(monkeypatch):
    """Under CPU bf16 autocast (post.dtype = "bfloat16") attention takes q, k, v in float32
    through the native kernel (its gradient included) and the loss stays within bf16 rounding
    of the float32 loss; generate samples through the native step with bf16 copies of the
    linear weights (the float32 model untouched): greedy tokens as in float32 and log-probs
    within bf16 rounding."""
    from seqlab.sampling import DecodeRule, generate

    torch.manual_seed(0)
    m = build_model(ModelConfig(type="transformer", block_size=32, n_embd=32, n_head=4, n_layer=2, dropout=0.0,
                                pos="rope", n_kv_head=2), 11)
    idx = torch.randint(0, 11, (3, 20))
    calls = []
    real = native.causal_attention
    monkeypatch.setattr(native, "causal_attention", lambda *a: calls.append({t.dtype for t in a[:3]}) or real(*a))

    def loss_of():
        logits = m.logits(idx[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten())

    ref = loss_of()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_of()
    assert calls == [{torch.float32}] * 4
    assert abs(low.item() - ref.item()) < 0.02 * ref.item()
    low.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.parameters())
    m.eval()
    packed = []
    real_pack = native.pack
    monkeypatch.setattr(native, "pack", lambda model, rows=None: packed.append(real_pack(model, rows)) or packed[-1])

    def sample():
        return generate(m, [[1, 3, 4], [1, 5]], 8, DecodeRule(temperature=0.0), eos_id=-1)

    plain = sample()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sample()
    assert packed[0].layers[2].dtype == torch.float32 and packed[1].layers[2].dtype == torch.bfloat16
    assert packed[1].wte.dtype == torch.float32 and m.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert torch.equal(plain.tokens, auto.tokens)
    assert float((plain.model_logprobs - auto.model_logprobs).abs().max()) < 0.05
    assert not torch.equal(plain.model_logprobs, auto.model_logprobs)  # bf16 matmuls did run
