"""Each post-training loss against numbers computed by hand."""

import math

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.models import build_model
from seqlab.post.dpo import dpo_loss
from seqlab.post.grpo import grpo_loss
from seqlab.post.reward_model import ScalarHead, bradley_terry_loss
from seqlab.post.sft import sft_loss


class TableModel(torch.nn.Module):
    """logits depend only on the current token: a bigram table we can reason about."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, idx, targets=None):
        return self.table[idx], None


def test_sft_masks_prompt_and_padding():
    # vocab 3; from token 0 the next-token probs are (1/2, 1/4, 1/4); from 1: (1/4, 1/2, 1/4)
    t = torch.log(torch.tensor([[.5, .25, .25], [.25, .5, .25], [1 / 3, 1 / 3, 1 / 3]]))
    m = TableModel(t)
    ids = torch.tensor([[0, 1, 1, 0]])
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # only tokens 2 and 3 are completion
    # completion tokens: 1 after 1 (p=.5), 0 after 1 (p=.25)
    expect = -(math.log(.5) + math.log(.25)) / 2
    assert sft_loss(m, ids, mask).item() == pytest.approx(expect)
    empty = sft_loss(m, ids, torch.zeros(1, 4))
    assert empty.item() == 0.0 and not torch.isnan(empty)
    empty.backward()  # a batch without completion tokens still gives a finite (zero) gradient
    assert torch.isfinite(m.table.grad).all()


def test_dpo_and_ipo_hand_computed():
    pc, pr = torch.tensor([-1.0]), torch.tensor([-3.0])
    rc, rr = torch.tensor([-2.0]), torch.tensor([-2.0])
    # h_w = 1, h_l = -1, delta = 2; beta = .1 -> -log sigmoid(.2)
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.2)))
    assert stats["accuracy"] == 1.0 and stats["margin"] == pytest.approx(0.2)
    # IPO: (delta - 1 / (2 beta))^2 = (2 - 5)^2
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx(9.0)
    # at the reference (delta = 0) the DPO loss is log 2
    z = torch.zeros(3)
    assert dpo_loss(z, z, z, z, beta=0.5)[0].item() == pytest.approx(math.log(2))


def test_bradley_terry_hand_computed():
    rw, rl = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expect = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert bradley_terry_loss(rw, rl).item() == pytest.approx(expect)
    # a margin of 1 shifts the first pair's difference to 0
    assert bradley_terry_loss(rw[:1], rl[:1], 1.0).item() == pytest.approx(math.log(2))


def test_scalar_head_on_any_model_scores_the_last_real_token():
    body = build_model(ModelConfig(type="gru", n_embd=8), 7)
    rm = ScalarHead(body, 7).eval()  # no dropout
    ids = torch.tensor([[1, 3, 4, 0], [1, 3, 4, 5]])
    scores = rm(ids, torch.tensor([3, 3]))
    assert scores[0].item() == pytest.approx(scores[1].item(), abs=1e-6)  # padding after length ignored


def grpo_inputs():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.4, 0.1]]))
    old = torch.log(torch.tensor([[0.25, 0.5], [0.4, 0.2]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    A = torch.tensor([1.0, -1.0])
    return logp, old, A, mask


def test_grpo_per_token_and_aggregations():
    """ratios: row 0 = (2, 1), row 1 = (1, .5 masked). epsilon .2:
    row 0, A=+1: token 0: -min(2, 1.2) = -1.2; token 1: -min(1, 1) = -1
    row 1, A=-1: token 0: -min(-1, -1) = 1 (token 1 masked)."""
    logp, old, A, mask = grpo_inputs()
    L = {"grpo": ((-1.2 - 1.0) / 2 + 1.0) / 2, "bnpo": (-1.2 - 1.0 + 1.0) / 3,
         "dapo": (-1.2 - 1.0 + 1.0) / 3, "dr_grpo": (-1.2 - 1.0 + 1.0) / (2 * 4)}
    for loss_type, expect in L.items():
        loss, stats = grpo_loss(logp, old, A, mask, epsilon=0.2, loss_type=loss_type, max_completion_length=4)
        assert loss.item() == pytest.approx(expect), loss_type
    assert stats["clip_high"] == pytest.approx(1 / 3)  # token (0, 0): ratio 2 > 1.2 with A > 0


def test_grpo_epsilon_high_and_kl():
    logp, old, A, mask = grpo_inputs()
    # epsilon_high 1.5 lets the ratio 2 through unclipped: token (0, 0) gives -2
    loss, _ = grpo_loss(logp, old, A, mask, epsilon=0.2, epsilon_high=1.5, loss_type="bnpo")
    assert loss.item() == pytest.approx((-2.0 - 1.0 + 1.0) / 3)
    ref = logp - math.log(2)  # ref_logp - logp = -ln 2 everywhere: k3 = 1/2 + ln 2 - 1
    k3 = 0.5 + math.log(2) - 1
    loss_kl, stats = grpo_loss(logp, old, A, mask, epsilon=0.2, beta=0.1, ref_logp=ref, loss_type="bnpo")
    base, _ = grpo_loss(logp, old, A, mask, epsilon=0.2, loss_type="bnpo")
    assert loss_kl.item() == pytest.approx(base.item() + 0.1 * k3)
    assert stats["kl"] == pytest.approx(k3)


def test_grpo_zero_variance_group_gives_no_gradient():
    from seqlab.post.common import group_advantages

    A = group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0]), 4)
    logp = torch.log(torch.tensor([[0.3, 0.6]] * 4)).requires_grad_()
    loss, _ = grpo_loss(logp, logp.detach(), A, torch.ones(4, 2), loss_type="grpo")
    loss.backward()
    assert loss.item() == 0.0 and logp.grad.abs().max().item() == 0.0


def test_grpo_on_policy_gradient_is_reinforce_with_group_baseline():
    """With rho = 1 the gradient w.r.t. logp is -A / normaliser per token."""
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])).requires_grad_()
    A = torch.tensor([1.0, -1.0])
    loss, _ = grpo_loss(logp, logp.detach(), A, torch.ones(2, 2), loss_type="bnpo")
    loss.backward()
    assert loss.item() == pytest.approx(0.0)
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))


def test_ppo_clipped_surrogate_and_value_clip_hand_computed():
    from seqlab.post.ppo import ppo_losses

    logp = torch.log(torch.tensor([[0.6, 0.3]]))
    old = torch.log(torch.tensor([[0.4, 0.6]]))  # ratios 1.5 and 0.5
    A = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    V, V_old, R = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[2.0, 0.1]])
    pg, vf, stats = ppo_losses(logp, old, A, V, V_old, R, mask, clip_coef=0.2, vf_clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2; token 1: max(0.5, 0.8) = 0.8 -> mean -0.2
    assert pg.item() == pytest.approx(-0.2)
    # token 0: V=1 vs clipped 0.7: max((1-2)^2, (0.7-2)^2) = 1.69; token 1: max(.01, .01) = .01
    assert vf.item() == pytest.approx(0.5 * (1.69 + 0.01) / 2)
    assert stats["clip_frac"] == 1.0


def test_ppo_token_rewards_put_the_score_at_the_last_token_and_kl_everywhere():
    from seqlab.post.ppo import token_rewards

    old = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25, 0.25], [0.25, 0.25, 0.25]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = token_rewards(torch.tensor([1.0, 2.0]), old, ref, mask, kl_beta=0.1, kind="k1")
    kl = math.log(2)
    assert r[0].tolist() == pytest.approx([-0.1 * kl, -0.1 * kl, 1.0 - 0.1 * kl])
    assert r[1].tolist() == pytest.approx([-0.1 * kl, 2.0 - 0.1 * kl, 0.0])


def test_ppo_token_rewards_after_a_prompt():
    """Completions start after the prompt: the score goes to the last *masked-in*
    position (index 4 here: prompt 0-1, completion 2-4, padding 5), not to index
    (completion length - 1) = 2, and an empty row gets nothing."""
    from seqlab.post.ppo import token_rewards

    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0] * 6])
    r = token_rewards(torch.tensor([3.0, 5.0, 7.0]), torch.zeros(3, 6), None, mask, kl_beta=0.0, kind="k1")
    assert r.tolist() == [[0, 0, 0, 0, 3.0, 0], [0, 0, 0, 0, 0, 5.0], [0] * 6]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_grpo_chunk_losses_weighted_by_chunk_weight_add_up_to_the_whole_batch(loss_type):
    """micro_batch: each chunk's loss times its share of the batch normaliser sums to the
    loss of the whole batch, for every aggregation (rows of unequal lengths, a masked tail)."""
    from seqlab.post.grpo import chunk_weight

    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(5, 6, generator=g)
    old = -torch.rand(5, 6, generator=g)
    A = torch.randn(5, generator=g)
    mask = (torch.arange(6) < torch.tensor([6, 2, 4, 1, 5])[:, None]).float()
    whole, _ = grpo_loss(logp, old, A, mask, loss_type=loss_type, max_completion_length=6)
    for size in (1, 2, 3):
        parts = [slice(i, min(i + size, 5)) for i in range(0, 5, size)]
        total = sum(grpo_loss(logp[r], old[r], A[r], mask[r], loss_type=loss_type, max_completion_length=6)[0]
                    * chunk_weight(mask, r, loss_type) for r in parts)
        assert total.item() == pytest.approx(whole.item(), rel=1e-6), size
