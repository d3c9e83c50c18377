"""Shared post-training maths against hand-computed numbers."""

import math

import pytest
import torch

from seqlab.post import common
from seqlab.post.common import (gae, group_advantages, kl_estimate, masked_mean,
                                masked_whiten, token_logprobs, token_logprobs_and_entropy)


def test_token_logprobs_hand_computed_and_temperature():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # temperature 2: logits (0, ln3 / 2) -> p1 = sqrt(3) / (1 + sqrt(3))
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    assert token_logprobs(logits, torch.tensor([[1]]), 2.0).item() == pytest.approx(math.log(p1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_token_logprobs_and_entropy_match_log_softmax(dtype, temperature, monkeypatch):
    """The blocked forward/backward (post/common._TokenLogprobs) against log_softmax + gather
    and the entropy of softmax, in float32 from float32 or bf16 logits: values, the gradient
    of a weighted sum, a row with -inf logits (masked vocabulary) and a padding token (-1).
    Small blocks, so rows straddle block edges."""
    monkeypatch.setattr(common, "_BLOCK_FLOATS", 3 * 700)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 7, 700, generator=g) * 3).to(dtype)
    x[0, 0, :350] = float("-inf")
    x.requires_grad_()
    y = torch.randint(350, 700, (3, 7), generator=g)
    y[1, 3] = -1
    w = torch.randn(3, 7, generator=g)
    lp, ent = token_logprobs_and_entropy(x, y, temperature)
    assert lp.dtype == ent.dtype == torch.float32 and not ent.requires_grad
    (lp * w).sum().backward()
    fused_grad, x.grad = x.grad, None
    xf = x.float() / temperature
    ref = torch.log_softmax(xf, -1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
    (ref * w).sum().backward()
    torch.testing.assert_close(lp, ref.detach(), atol=1e-5, rtol=1e-5)
    logp_all = torch.log_softmax(xf.detach(), -1)
    ref_ent = -(logp_all.exp() * logp_all.masked_fill(logp_all == float("-inf"), 0)).sum(-1)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(ent).all() and ent[0, 0] < math.log(350) + 1e-4  # only 350 tokens possible
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # the gradient comes back in the logits' dtype
    torch.testing.assert_close(fused_grad.float(), x.grad.float(), atol=tol, rtol=tol)
    assert fused_grad.dtype == dtype
    torch.testing.assert_close(token_logprobs(x, y, temperature), lp)


def test_masked_mean_empty_mask_is_zero_not_nan():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert masked_mean(x, torch.tensor([[1.0, 0.0, 1.0]])).item() == 2.0
    empty = masked_mean(x, torch.zeros(1, 3))
    assert empty.item() == 0.0
    per_row = masked_mean(torch.ones(2, 2), torch.tensor([[1.0, 1.0], [0.0, 0.0]]), dim=1)
    assert per_row.tolist() == [1.0, 0.0]


def test_masked_whiten():
    x = torch.tensor([1.0, 3.0, 100.0])
    m = torch.tensor([1.0, 1.0, 0.0])
    w = masked_whiten(x, m)
    # mean 2, population std 1 over the masked entries
    assert w[:2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k3 with d = ref - logp = -ln 2: e^d - d - 1 = 0.5 + ln 2 - 1
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)
    assert kl_estimate(ref, ref, "k3").item() == 0.0


def test_kl_estimators_are_unbiased_on_samples():
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum().item()
    # expectation under p, computed exactly over the support
    for kind in ("k1", "k3"):
        est = (p * kl_estimate(p.log(), q.log(), kind)).sum().item()
        assert est == pytest.approx(exact, abs=1e-6)


def brute_force_gae(r, v, gamma, lam):
    T = len(r)
    adv = []
    for t in range(T):
        total = 0.0
        for k in range(t, T):
            v_next = v[k + 1] if k + 1 < T else 0.0
            delta = r[k] + gamma * v_next - v[k]
            total += (gamma * lam) ** (k - t) * delta
        adv.append(total)
    return adv


def test_gae_against_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 6, generator=g)
    v = torch.randn(3, 6, generator=g)
    lengths = [6, 4, 1]
    mask = torch.zeros(3, 6)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    adv, ret = gae(r, v, mask, gamma=0.9, lam=0.8)
    for b, n in enumerate(lengths):
        expect = brute_force_gae(r[b, :n].tolist(), v[b, :n].tolist(), 0.9, 0.8)
        assert adv[b, :n].tolist() == pytest.approx(expect, abs=1e-5)
        assert adv[b, n:].abs().sum() == 0
        assert ret[b, :n].tolist() == pytest.approx((adv[b, :n] + v[b, :n]).tolist(), abs=1e-6)


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, 4, "group", eps=0.0 + 1e-4)
    # group 1: mean .5, sample std sqrt(1/3); group 2 has zero variance -> all zeros
    s = math.sqrt(1 / 3)
    assert a[:4].tolist() == pytest.approx([.5 / (s + 1e-4), -.5 / (s + 1e-4), -.5 / (s + 1e-4), .5 / (s + 1e-4)])
    assert a[4:].tolist() == [0.0] * 4
    assert group_advantages(r, 4, "none")[:4].tolist() == [.5, -.5, -.5, .5]
    batch_std = r.std().item()
    assert group_advantages(r, 4, "batch")[0].item() == pytest.approx(.5 / (batch_std + 1e-4))


def test_entropy_hand_computed():
    _, uniform = token_logprobs_and_entropy(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long))
    assert uniform.item() == pytest.approx(math.log(4))
    _, certain = token_logprobs_and_entropy(torch.tensor([[[0.0, -1e9]]]), torch.zeros(1, 1, dtype=torch.long))
    assert certain.item() == pytest.approx(0.0, abs=1e-6)


def test_completion_batch_matches_the_row_by_row_padding():
    from seqlab.post.data import completion_batch, pad_batch
    from seqlab.sampling import Generation

    pad = 0
    prompts = [[1, 5, 6, 7], [1, 8], [1, 9, 9]]
    # completions of 3, 5 and 0 tokens (the last one ended at once), right-padded with pad
    tokens = torch.tensor([[4, 4, 2, pad, pad], [5, 6, 7, 8, 3], [pad] * 5])
    lengths = torch.tensor([3, 5, 0])
    slp = torch.tensor([[-0.1, -0.2, -0.3, 0, 0], [-1.0, -1.1, -1.2, -1.3, -1.4], [0.0] * 5])
    gen = Generation(tokens, lengths, slp, slp, torch.tensor([True, False, False]), "plain")
    ids, mask, old = completion_batch(prompts, gen, pad)
    pairs = [(p + tokens[b, :int(lengths[b])].tolist(), [0] * len(p) + [1] * int(lengths[b]))
             for b, p in enumerate(prompts)]
    ref_ids, ref_mask = pad_batch(pairs, pad)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask[:, 1:])
    assert ids.shape == (3, 7)  # the longest row: 2 prompt + 5 completion tokens
    ref_old = torch.zeros(3, 6)
    ref_old[0, 3:6] = slp[0, :3]
    ref_old[1, 1:6] = slp[1]
    assert torch.equal(old, ref_old)
