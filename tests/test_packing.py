"""Packed training batches (EncodedLines.packed_batch + Transformer's positions/starts):
the same targets, loss and gradients as the padded batch."""

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.data.lines import encode_lines
from seqlab.data.tokenizer import CharTokenizer
from seqlab.models import build_model, native


def lines_of_varied_length(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ["".join("ab"[int(c)] for c in torch.randint(0, 2, (int(L),), generator=g))
            for L in torch.randint(1, 30, (n,), generator=g)]


@pytest.fixture()
def encoded():
    lines = lines_of_varied_length()
    tok = CharTokenizer.train(lines)
    return lines, tok, encode_lines(lines, tok, block_size=31)


@pytest.mark.parametrize("times", [1, 2])
def test_packed_batch_holds_every_sequence_once_at_its_own_positions(encoded, times):
    lines, tok, enc = encoded
    idx = torch.tensor([3, 0, 7, 7, 12, 25, 39, 1, 18])  # a repeat, like a sampled batch
    width = (int(enc.lengths[idx].max()) + 1) * times
    x, y, pos, starts = enc.packed_batch(idx, tok.pad_id, width)
    assert x.size(1) == width and x.size(0) < len(idx) / times  # fewer rows than sequences
    assert int((y != -1).sum()) == enc.target_count(idx)
    got = []
    for r in range(x.size(0)):
        c = 0
        while c < width:
            s = int(starts[r, c])
            assert s == c  # a sequence begins at its start
            n = 1
            while c + n < width and int(starts[r, c + n]) == s:
                n += 1
            if int(x[r, c]) == tok.bos_id:
                assert pos[r, c: c + n].tolist() == list(range(n))
                ids = x[r, c + 1: c + n].tolist()
                assert y[r, c: c + n].tolist() == ids + [tok.eos_id]
                got.append(tok.decode(ids))
            else:  # the row's padding: no targets
                assert (x[r, c: c + n] == tok.pad_id).all() and (y[r, c: c + n] == -1).all()
            c += n
    assert sorted(got) == sorted(lines[i] for i in idx.tolist())


@pytest.mark.parametrize("pos,n_kv_head,native_attention", [
    ("learned", 0, True), ("rope", 2, True), ("learned", 0, False), ("rope", 2, False)])
def test_packed_loss_and_gradients_equal_the_padded_batch(encoded, monkeypatch, pos, n_kv_head, native_attention):
    _, tok, enc = encoded
    if not native_attention:
        monkeypatch.setattr(native, "attention_applies", lambda q, upcast=False: False)
    elif native.load() is None:
        pytest.skip("no C++ compiler")
    torch.manual_seed(0)
    model = build_model(ModelConfig(type="transformer", n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32,
                                    block_size=31, dropout=0.0, pos=pos), tok.vocab_size)
    idx = torch.arange(16)
    x, y = enc.batch(idx, tok.pad_id)
    _, loss = model(x, y, loss_reduction="sum")
    want = torch.autograd.grad(loss, list(model.parameters()))
    width = model.packed_width(int(enc.lengths[idx].max()) + 1)
    assert width == 2 * x.size(1)  # two sequences' worth: 2 x 30 x 8 within ATTENTION_MAX_TD
    xp, yp, positions, starts = enc.packed_batch(idx, tok.pad_id, width)
    assert xp.numel() < 0.8 * x.numel()
    _, loss_p = model(xp, yp, loss_reduction="sum", positions=positions, starts=starts)
    got = torch.autograd.grad(loss_p, list(model.parameters()))
    assert abs(loss_p.item() - loss.item()) <= 1e-5 * abs(loss.item())
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= 1e-4 * w.abs().max() + 1e-7
