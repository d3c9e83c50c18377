"""The encoder-decoder (task seq2seq): cross-attention, cached decoding, padding, the CLI."""

import json
import subprocess
import sys

import pytest
import torch

from seqlab.config import ModelConfig
from seqlab.models.seq2seq import Seq2Seq
from seqlab.models.transformer import CrossAttention
from seqlab.sampling import DecodeRule, generate


def model(**kw):
    torch.manual_seed(0)
    return Seq2Seq(12, ModelConfig(**{**dict(n_layer=2, n_head=2, n_embd=16, block_size=24, dropout=0.0), **kw})).eval()


def cached_logits(m, src, sl, tgt, prefix: int) -> torch.Tensor:
    """Logits for tgt[:, prefix - 1:] from bind + prefill(tgt[:, :prefix]) + one step per token."""
    bound = m.bind(src, sl)
    logits, state = bound.prefill(tgt[:, :prefix], torch.full((tgt.size(0),), prefix))
    got = [logits]
    for t in range(prefix, tgt.size(1)):
        logits, state = bound.step(tgt[:, t], state)
        got.append(logits)
    return torch.stack(got, 1)


def assert_rows_decode_alone(m, src, sl):
    """Greedy decoding of the batch gives each row what decoding its source alone gives."""
    batch = generate(m.bind(src, sl), [[1]] * src.size(0), 6, DecodeRule(temperature=0.0), eos_id=2).rows()
    for b, n in enumerate(sl.tolist()):
        alone = generate(m.bind(src[b: b + 1, :n], torch.tensor([n])), [[1]], 6, DecodeRule(temperature=0.0),
                         eos_id=2).rows()
        assert alone[0] == batch[b]


def test_cross_attention_equals_multihead_attention():
    torch.manual_seed(0)
    C, H = 16, 4
    ours = CrossAttention(ModelConfig(n_embd=C, n_head=H, dropout=0.0))
    ref = torch.nn.MultiheadAttention(C, H, bias=False, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.kv.weight]))
        ref.out_proj.weight.copy_(ours.proj.weight)
    x, mem = torch.randn(2, 5, C), torch.randn(2, 7, C)
    real = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    k, v = ours.memory_kv(mem)
    got = ours(x, k, v, real[:, None, None, :])
    want, weights = ref(x, mem, mem, key_padding_mask=~real, average_attn_weights=False)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(ours.weights(x, k, real[:, None, None, :]), weights, atol=1e-6)


def test_cached_decoding_equals_the_full_forward():
    m = model()
    src = torch.randint(3, 12, (3, 9))
    sl = torch.tensor([9, 4, 6])
    tgt = torch.randint(3, 12, (3, 8))
    tgt[:, 0] = 1
    with torch.no_grad():
        full, _ = m(src, sl, tgt)
        assert torch.allclose(cached_logits(m, src, sl, tgt, 3), full[:, 2:], atol=1e-5)


def test_source_padding_changes_nothing_and_rows_stay_with_their_sources():
    m = model()
    src = torch.randint(3, 12, (3, 9))
    sl = torch.tensor([9, 4, 6])
    src[1, 4:] = 0
    src[2, 6:] = 0
    tgt = torch.randint(3, 12, (3, 5))
    with torch.no_grad():
        full, _ = m(src, sl, tgt)
        for b, n in enumerate(sl.tolist()):
            alone, _ = m(src[b: b + 1, :n], torch.tensor([n]), tgt[b: b + 1])
            assert torch.allclose(full[b], alone[0], atol=1e-5)
        assert_rows_decode_alone(m, src, sl)  # equal prompts, different sources: never merged


def test_decoder_is_causal_and_the_encoder_is_not():
    m = model()
    src = torch.randint(3, 12, (1, 6))
    tgt = torch.randint(3, 12, (1, 6))
    src2, tgt2 = src.clone(), tgt.clone()
    src2[0, -1] = (src[0, -1] + 1) % 12
    tgt2[0, -1] = (tgt[0, -1] + 1) % 12
    n = torch.tensor([6])
    with torch.no_grad():
        base = m(src, n, tgt)[0]
        assert not torch.allclose(m(src2, n, tgt)[0][0, 0], base[0, 0], atol=1e-6)  # the first target sees the whole source
        assert torch.equal(m(src, n, tgt2)[0][0, :5], base[0, :5])  # but no later target


def run(*args):
    r = subprocess.run([sys.executable, "-m", "seqlab", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_fail(*args) -> str:
    """A seqlab command that must fail with one `error:` line; that line."""
    r = subprocess.run([sys.executable, "-m", "seqlab", *map(str, args)], capture_output=True, text=True)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


@pytest.mark.slow
def test_reverse_end_to_end(tmp_path):
    run("data", "make", "reverse", "--out", tmp_path / "rev.jsonl", "--n", 2000, "--json")
    res = run("train", "--data", tmp_path / "rev.jsonl", "--out", tmp_path / "run", "--steps", 400, "--n-layer", 2,
              "--n-embd", 64, "--dropout", 0, "--threads", 1, "--eval-interval", 200, "--quiet", "--json")
    assert res["exact_match"] > 0.5 and res["cer"] < 0.2
    out = run("sample", tmp_path / "run", "--input", "abcdef", "--temperature", 0, "--json")
    assert out["samples"] == ["fedcba"]
    ev = run("eval", tmp_path / "run", "--data", tmp_path / "rev.jsonl", "--json")
    assert ev["examples"] == 2000 and 0 <= ev["cer"] <= 1


def test_seq2seq_cli_smoke(tmp_path):
    rows = [{"input": s, "target": s[::-1]} for s in ["ab", "abc", "ba", "cab", "bca", "a", "cc", "acb"] * 8]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run("train", "--data", tmp_path / "r.jsonl", "--out", tmp_path / "run", "--steps", 5, "--n-layer", 1,
              "--n-embd", 16, "--threads", 1, "--quiet", "--json")
    assert {"exact_match", "cer"} <= set(res) and 0 <= res["exact_match"] <= 1
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["task"]["type"] == "seq2seq"
    out = run("sample", tmp_path / "run", "--input", "abc", "--beam", 2, "--json")
    assert out["input"] == "abc" and len(out["samples"]) == 1 and isinstance(out["samples"][0], str)


def test_cross_attention_maps_are_distributions_over_real_source_tokens(tmp_path):
    m = model()
    src = torch.randint(3, 12, (2, 7))
    sl = torch.tensor([7, 3])
    tgt = torch.randint(3, 12, (2, 4))
    with torch.no_grad():
        maps = m.cross_attention_maps(src, sl, tgt)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 4, 7)
    for att in maps:
        assert torch.allclose(att.sum(-1), torch.ones(2, 2, 4), atol=1e-6)
        assert (att[1, :, :, 3:] == 0).all()  # the second source's padding gets no weight


def test_heatmap_of_a_seq2seq_run(tmp_path):
    rows = [{"input": s, "target": s[::-1]} for s in ["ab", "abc", "ba", "cab"] * 8]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run("train", "--data", tmp_path / "r.jsonl", "--out", tmp_path / "run", "--steps", 2, "--n-layer", 1,
        "--n-embd", 16, "--threads", 1, "--quiet", "--json")
    res = run("heatmap", tmp_path / "run", "--input", "abc", "--out", tmp_path / "h.png", "--json")
    assert res["layers"] == 1 and res["tokens"] == 5 and (tmp_path / "h.png").stat().st_size > 5000


# ------------------------------------------------------------------ recurrent encoder-decoder


def rnn_model(kind, attention, heads=1):
    from seqlab.models.rnn_seq2seq import RNNSeq2Seq

    torch.manual_seed(0)
    return RNNSeq2Seq(12, ModelConfig(type=kind, n_layer=2, n_embd=8, n_hidden=6, dropout=0.0), attention,
                      heads).eval()


@pytest.mark.parametrize("kind,attention,heads", [("gru", "dot", 1), ("lstm", "additive", 1), ("rnn", "dot", 1),
                                                  ("gru", "additive", 2), ("lstm", "dot", 3)])
def test_rnn_seq2seq_cached_decoding_padding_and_rows(kind, attention, heads):
    m = rnn_model(kind, attention, heads)
    src = torch.randint(3, 12, (3, 9))
    sl = torch.tensor([9, 4, 6])
    src[1, 4:] = 0
    src[2, 6:] = 0
    tgt = torch.randint(3, 12, (3, 7))
    tgt[:, 0] = 1
    with torch.no_grad():
        full, _ = m(src, sl, tgt)
        for b, n in enumerate(sl.tolist()):  # padding changes nothing
            alone, _ = m(src[b: b + 1, :n], torch.tensor([n]), tgt[b: b + 1])
            assert torch.allclose(full[b], alone[0], atol=1e-5)
        assert torch.allclose(cached_logits(m, src, sl, tgt, 2), full[:, 1:], atol=1e-5)
        assert_rows_decode_alone(m, src, sl)


@pytest.mark.parametrize("attention,heads", [("dot", 1), ("additive", 1), ("dot", 2), ("additive", 3)])
def test_rnn_attention_scores_by_formula(attention, heads):
    m = rnn_model("gru", attention, heads)
    h, memory = torch.randn(1, 2, 6), torch.randn(1, 3, 12)
    mask = torch.tensor([[True, True, False]])
    d = 6 // heads  # dot: head i scores with slice i of h and of W_k m, over sqrt(d) when heads > 1
    with torch.no_grad():
        s = m.scores(h, memory, mask)
        assert s.shape == (1, heads, 2, 3)
        for i in range(heads):
            for t in range(2):
                for j in range(2):
                    k = m.key.weight @ memory[0, j]
                    want = (h[0, t, i * d:(i + 1) * d] @ k[i * d:(i + 1) * d] / (d ** 0.5 if heads > 1 else 1)
                            if attention == "dot" else m.v.weight[i] @ torch.tanh(m.query.weight @ h[0, t] + k))
                    assert s[0, i, t, j].item() == pytest.approx(want.item(), abs=1e-5)
        assert torch.isinf(s[0, :, :, 2]).all()
        # each head's context enters the output: the combine layer reads h and one 2H context per head
        assert m.combine.in_features == 6 + heads * 12


def test_rnn_seq2seq_cli(tmp_path):
    rows = [{"input": s, "target": s[::-1]} for s in ["ab", "abc", "ba", "cab", "bca", "a", "cc", "acb"] * 8]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run("train", "--data", tmp_path / "r.jsonl", "--out", tmp_path / "run", "--model", "lstm",
              "--seq2seq-attention", "additive", "--steps", 5, "--n-layer", 1, "--n-embd", 16, "--threads", 1,
              "--quiet", "--json")
    assert {"exact_match", "cer"} <= set(res)
    out = run("sample", tmp_path / "run", "--input", "abc", "--temperature", 0, "--json")
    assert isinstance(out["samples"][0], str)
    res = run("heatmap", tmp_path / "run", "--input", "abc", "--out", tmp_path / "h.png", "--json")
    assert res["layers"] == 1 and res["heads"] == 1
    run("train", "--data", tmp_path / "r.jsonl", "--out", tmp_path / "run2", "--model", "gru", "--seq2seq-heads", 2,
        "--steps", 2, "--n-layer", 1, "--n-embd", 16, "--threads", 1, "--quiet", "--json")
    res = run("heatmap", tmp_path / "run2", "--input", "abc", "--out", tmp_path / "h2.png", "--json")
    assert res["heads"] == 2
    err = run_fail("train", "--data", tmp_path / "r.jsonl", "--out", tmp_path / "run3", "--model", "gru",
                   "--seq2seq-heads", 5, "--n-embd", 16, "--steps", 2)
    assert "model.seq2seq_heads" in err and "16" in err
