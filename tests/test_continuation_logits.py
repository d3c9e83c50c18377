"""Transformer.continuation_logits (each shared prompt run once) against the full forward
over every prompt + completion, values and gradients; and the fallback for other models."""

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.models import build_model
from seqlab.post.common import continuation_logits

V = 13
PROMPTS = [[1, 4, 5, 6, 7], [1, 8], [1, 4, 5, 6, 7], [1, 9, 10, 11], [1, 8]]


def model(extra, kind="transformer"):
    torch.manual_seed(0)
    cfg = ModelConfig(type=kind, block_size=32, n_embd=32, n_head=4, n_layer=2, dropout=0.0, **extra)
    m = build_model(cfg, V)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def full_logits(m, prompts, comp):
    """Each row alone through the ordinary forward: logits predicting its completion."""
    out = []
    for p, c in zip(prompts, comp):
        ids = torch.tensor([p + c.tolist()])
        logits, _ = m(ids[:, :-1])
        out.append(logits[0, len(p) - 1:])
    return torch.stack(out)


@pytest.mark.parametrize("extra", [{}, {"pos": "rope", "n_kv_head": 2, "norm": "rmsnorm", "mlp": "swiglu"},
                                   {"pos": "rope", "n_kv_head": 1, "qk_norm": True, "head_dim": 16}],
                         ids=["learned", "llama-gqa", "qwen3"])
@pytest.mark.parametrize("width", [1, 6])
def test_continuation_logits_equal_the_full_forward_and_its_gradients(extra, width):
    m = model(extra)
    comp = torch.randint(2, V, (len(PROMPTS), width), generator=torch.Generator().manual_seed(3))
    got = continuation_logits(m, PROMPTS, comp, pad_id=0)
    want = full_logits(m, PROMPTS, comp)
    assert got.shape == (len(PROMPTS), width, V)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(4))
    grads = []
    for logits in (got, want):
        m.zero_grad()
        (logits * w).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:  # float32 sums in another order: relative to the gradient's scale
        scale = grads[1][n].abs().max().item()
        assert (grads[0][n] - grads[1][n]).abs().max().item() <= 1e-5 * scale + 1e-6, n


def test_a_wrong_prefix_mask_would_show():
    """The comparison can fail: a suffix that may not see its prefix gives other logits."""
    m = model({"pos": "rope", "n_kv_head": 2})
    comp = torch.randint(2, V, (len(PROMPTS), 4), generator=torch.Generator().manual_seed(3))
    want = full_logits(m, PROMPTS, comp)
    shorter = continuation_logits(m, [p[:-1] + [0] if len(p) > 2 else p for p in PROMPTS], comp, pad_id=0)
    assert (shorter - want).abs().max() > 1e-2


def test_models_without_it_run_whole_sequences():
    m = model({}, kind="gru")
    comp = torch.randint(2, V, (len(PROMPTS), 3), generator=torch.Generator().manual_seed(3))
    got = continuation_logits(m, PROMPTS, comp, pad_id=0)
    assert torch.allclose(got, full_logits(m, PROMPTS, comp), atol=1e-5)


def test_under_cpu_bf16_autocast_the_masked_attention_runs_in_float32(monkeypatch):
    """Under CPU bf16 autocast every attention call gets float32 queries, keys and values
    (the native kernel's or SDPA's float32 path: both faster on a CPU than SDPA's bf16
    kernels), and the logits stay within bf16 rounding of the float32 model's."""
    import torch.nn.functional as F

    import seqlab.models.transformer as T

    m = model({"pos": "rope", "n_kv_head": 2, "norm": "rmsnorm", "mlp": "swiglu"})
    comp = torch.randint(2, V, (len(PROMPTS), 6), generator=torch.Generator().manual_seed(3))
    want = continuation_logits(m, PROMPTS, comp, pad_id=0)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(T.F, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = continuation_logits(m, PROMPTS, comp, pad_id=0)
    assert seen and all(s == (torch.float32, torch.float32, torch.float32, False) for s in seen)
    assert (got.float() - want).abs().max().item() < 0.05 * want.abs().max().item()


@pytest.mark.parametrize("kind,extra", [("transformer", {}), ("transformer", {"attention_window": 3}), ("gru", {})])
def test_sequence_logprobs_from_logits_at_equals_the_full_forward(kind, extra):
    """sequence_logprobs takes logits at the completion's positions only (SeqModel.logits_at;
    the Transformer runs its output layer there only): the same log-probs, zeros and
    gradients as log_softmax over the ordinary forward's logits, on padded rows with prompts
    of different lengths and a non-binary mask weight."""
    from seqlab.post.common import sequence_logprobs, token_logprobs
    from seqlab.post.data import pad_batch

    torch.manual_seed(1)
    pairs = []
    for p in PROMPTS:
        c = torch.randint(2, V, (len(p) % 3 + 2,)).tolist()
        pairs.append((p + c, [0] * len(p) + [1] * len(c)))
    ids, mask = pad_batch(pairs, 0)
    mask[2, -1] = 0.5  # a weighted token: its log-prob scaled as the full path scales it
    m = model(extra, kind)
    got = sequence_logprobs(m, ids, mask, temperature=0.8)
    got.sum().backward()
    got_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    want = token_logprobs(m(ids[:, :-1])[0], ids[:, 1:], 0.8) * mask[:, 1:]
    want.sum().backward()
    assert torch.allclose(got, want, atol=1e-5) and (got[mask[:, 1:] == 0] == 0).all()
    for g, p in zip(got_grads, m.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)
