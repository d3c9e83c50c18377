"""The run state every loop uses (engine.py): checkpoint round trip with exact resume, the
adapters-only checkpoint of a partly frozen model, the non-finite stop, and the update step's
'no gradient, no update' rule."""

import json

import pytest
import torch
from safetensors.torch import load_file

from seqlab.checkpoint import latest_checkpoint
from seqlab.engine import Engine, OptimSettings
from seqlab.errors import SeqlabError


def net(frozen_base: bool):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    if frozen_base:  # like LoRA: the base is frozen, only the last layer trains
        for p in m[0].parameters():
            p.requires_grad_(False)
    return m


def run(engine, m, gen, steps, start=0):
    losses = []
    for step in range(start, steps):
        x = torch.randn(16, 4, generator=gen)
        losses.append(engine.update(step, lambda: ((m(x) - x.sum(1, keepdim=True)) ** 2).mean()).loss)
    return losses


SETTINGS = OptimSettings(lr=0.05, weight_decay=0.1, warmup_steps=2, steps=10, min_lr_ratio=0.1)


@pytest.mark.parametrize("frozen_base", [False, True])
def test_checkpoint_round_trip_resumes_exactly(tmp_path, frozen_base):
    m = net(frozen_base)
    gen = torch.Generator().manual_seed(1)
    whole = run(Engine(m, SETTINGS, generators={"data": gen}), m, gen, 10)
    final = [p.detach().clone() for p in m.parameters()]

    m = net(frozen_base)
    gen = torch.Generator().manual_seed(1)
    e = Engine(m, SETTINGS, run_dir=tmp_path, generators={"data": gen})
    first = run(e, m, gen, 4)
    path = e.save(4, {"counter": 7}, whole_model=True)
    saved = load_file(str(path / "weights.safetensors"))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(saved) == trainable  # a frozen base is not saved (LoRA: the adapters only)
    assert json.loads((path / "state.json").read_text())["whole_model"] is (not frozen_base)
    run(e, m, gen, 6)  # updates after the checkpoint: lost by the "kill"

    m = net(frozen_base)  # a new process: the loop rebuilds the frozen base from its start
    gen = torch.Generator().manual_seed(99)  # the saved generator state replaces this seed
    e = Engine(m, SETTINGS, run_dir=tmp_path, generators={"data": gen})
    step, state = e.restore()
    assert (step, state) == (4, {"counter": 7})
    assert first + run(e, m, gen, 10, start=4) == whole
    for p, q in zip(m.parameters(), final):
        assert torch.equal(p, q)


def test_partial_checkpoint_into_another_model_is_one_error_line(tmp_path):
    m = net(True)
    e = Engine(m, SETTINGS, run_dir=tmp_path)
    run(e, m, torch.Generator().manual_seed(1), 1)
    e.save(1)
    other = net(True)
    for p in other[0].parameters():  # trains more tensors than the checkpoint holds
        p.requires_grad_(True)
    other[2].weight.requires_grad_(False)
    with pytest.raises(SeqlabError, match=r"weights.safetensors: cannot load these weights") as e_info:
        Engine(other, SETTINGS, run_dir=tmp_path).restore()
    assert "\n" not in str(e_info.value)


def test_non_finite_stop_names_the_last_good_checkpoint(tmp_path):
    m = net(False)
    e = Engine(m, SETTINGS, run_dir=tmp_path, hint="lower train.lr")
    with pytest.raises(SeqlabError, match="step 1 .*no checkpoint was written yet"):
        e.update(0, lambda: m(torch.full((1, 4), float("nan"))).sum())
    run(e, m, torch.Generator().manual_seed(1), 3)
    e.save(3)
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(SeqlabError, match=r"step 4 .*last good checkpoint is .*step-00000003; lower train.lr"):
        e.update(3, lambda: m(torch.full((1, 4), float("inf"))).sum())
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))  # the bad step changed nothing
    assert latest_checkpoint(tmp_path).name == "step-00000003"


def test_no_gradient_means_no_update():
    """AdamW would still move the weights (momentum, weight decay) on a zero step."""
    m = net(False)
    e = Engine(m, SETTINGS)
    run(e, m, torch.Generator().manual_seed(1), 2)
    before = [p.detach().clone() for p in m.parameters()]
    upd = e.update(2, lambda: torch.tensor(0.5))  # a loss without a graph: nothing to learn
    assert (upd.stepped, upd.grad_norm, upd.loss) == (False, 0.0, 0.5)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
