"""Weight-only quantization (models/quant.py, `seqlab quantize`): the formats' error bounds,
bit-exact files, the kernels against the dequantized weight, the native decode step against
the Python one, and dynamic precision keeping exactly the layers its ranking names."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from seqlab.checkpoint import load_model
from seqlab.cli import main
from seqlab.config import run_config_from_dict
from seqlab.interop.quantize import quantize_run
from seqlab.models import native
from seqlab.models.quant import (QuantLinear, dequantize_int4, dequantize_int8, pack_nibbles, quantize_int4,
                                 quantize_int8, unpack_nibbles)
from seqlab.sampling import DecodeRule, generate
from seqlab.train import train


def test_int8_round_trip_within_half_a_step_per_row():
    w = torch.randn(48, 96) * torch.logspace(-2, 1, 48)[:, None]  # rows of very different scales
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16 and int(q.abs().max()) <= 127
    err = (dequantize_int8(q, s) - w).abs()
    assert bool((err <= s.float()[:, None] * 0.5 * (1 + 1e-3)).all())
    assert bool((q.abs().amax(1) >= 126).all())  # the range is used (a bf16 scale rounds by < 1%)


@pytest.mark.parametrize("group", [32, 64])
def test_int4_round_trip_within_half_a_step_per_group_and_nibbles_pack_exactly(group):
    w = torch.randn(32, 128) + torch.linspace(-3, 3, 128)  # groups with offsets: the zero point matters
    q, s, z = quantize_int4(w, group)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and s.shape == (32, 128 // group)
    err = (dequantize_int4(q, s, z) - w).abs().view(32, 128 // group, group)
    # half a step, plus what rounding the zero point to bf16 moves (at most 2^-9 of it)
    bound = s.float()[..., None] * 0.5 + z.float().abs()[..., None] * 2 ** -8 + 1e-6
    assert bool((err <= bound).all())
    assert torch.equal(unpack_nibbles(pack_nibbles(q)), q)
    packed = pack_nibbles(torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8))
    assert packed.tolist() == [[1 | 2 << 4, 15]]  # the even input in the low nibble


@pytest.mark.parametrize("bits,n_out", [(8, 40), (4, 48), (4, 40)])
def test_quant_linear_computes_with_its_dequantized_weight(bits, n_out):
    """The CPU kernels (bf16 activations) against x @ dequantized W^T in float32; an int4
    shape the kernel refuses (40 outputs: not a multiple of 16) multiplies exactly."""
    torch.manual_seed(0)
    lin = nn.Linear(64, n_out, bias=True)
    q = QuantLinear.from_linear(lin, bits, 32)
    x = torch.randn(5, 3, 64)
    ref = F.linear(x, q.dequantized(), lin.bias)
    y = q(x)
    assert y.shape == (5, 3, n_out) and y.dtype == torch.float32
    served = q.kernel() is not None
    assert served == (bits == 8 or n_out % 16 == 0)
    tol = 1e-2 if served else 1e-6  # bf16 activations and outputs where a kernel serves
    assert float((y - ref).detach().norm() / ref.detach().norm()) < tol
    # frozen, but the input gets its gradient through the dequantized weight (QLoRA)
    x.requires_grad_(True)
    q(x).sum().backward()
    assert torch.allclose(x.grad, q.dequantized().sum(0).expand(5, 3, 64), atol=1e-5)
    assert not any(p.requires_grad for p in q.parameters())


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_backward_dequantizes_in_blocks_of_rows_with_the_same_gradient(bits, monkeypatch):
    """Backward dequantizes a block of output rows at a time (no whole float copy of a large
    layer): blocks of 7 rows of 48 (a remainder included) give dy W exactly as one block."""
    from seqlab.models import quant

    torch.manual_seed(1)
    q = QuantLinear.from_linear(nn.Linear(64, 48), bits, 32)
    x = torch.randn(4, 64, requires_grad=True)
    dy = torch.randn(4, 48)
    q(x).backward(dy)
    whole = x.grad.clone()
    assert torch.allclose(whole, dy @ q.dequantized(), atol=1e-5)
    monkeypatch.setattr(quant, "BACKWARD_BLOCK", 7 * 64)
    calls = []
    rows = q.dequantized_rows
    monkeypatch.setattr(q, "dequantized_rows", lambda a, b: calls.append((a, b)) or rows(a, b))
    x.grad = None
    q(x).backward(dy)
    assert calls[0] == (0, 7) and calls[-1] == (42, 48) and len(calls) == 7
    assert torch.allclose(x.grad, whole, atol=1e-5)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    from conftest import tiny_words

    d = tmp_path_factory.mktemp("quant")
    data = d / "words.txt"
    data.write_text("\n".join(tiny_words(600)) + "\n")
    cfg = run_config_from_dict({"data": {"path": str(data)},
                                "model": {"type": "transformer", "n_layer": 2, "n_head": 4, "n_embd": 64,
                                          "block_size": 24, "dropout": 0.0, "pos": "rope", "norm": "rmsnorm",
                                          "mlp": "swiglu", "n_kv_head": 2},
                                "train": {"steps": 150, "batch_size": 32, "lr": 3e-3, "eval_interval": 150}})
    train(cfg, d / "float", progress=False)
    return d


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)[0]


@pytest.mark.parametrize("bits,max_kl,min_top1", [(8, 0.01, 0.95), (4, 0.1, 0.8)])
def test_quantized_run_stays_close_to_float32_and_loads_bit_exactly(float_run, bits, max_kl, min_top1):
    out = float_run / f"q{bits}"
    r = quantize_run(float_run / "float", out, bits, group_size=32)
    assert r["kl"] < max_kl and r["top1_agreement"] >= min_top1, r
    assert r["bytes"] < r["source_bytes"]
    layout = json.loads((out / "quantization.json").read_text())["layers"]
    assert layout["lm_head"] == 8 and layout["blocks.0.attn.qkv"] == bits  # the head at 8 bits by default
    f, _, _ = load_model(float_run / "float")
    qm, tok, _ = load_model(out)
    assert isinstance(qm.blocks[1].mlp.gate_up, QuantLinear) and qm.blocks[1].mlp.gate_up.bits == bits
    # the file holds exactly what was quantized: re-quantizing the float weights gives the same bytes
    again = QuantLinear.from_linear(f.blocks[1].mlp.gate_up, bits, 32)
    for name in ("qweight", "scales") + (("zeros",) if bits == 4 else ()):
        assert torch.equal(getattr(qm.blocks[1].mlp.gate_up, name), getattr(again, name)), name
    ids = torch.tensor([tok.encode_prompt("kari")])
    lf, lq = _logits(f, ids), _logits(qm, ids)
    kl = (F.softmax(lf, -1) * (F.log_softmax(lf, -1) - F.log_softmax(lq, -1))).sum(-1).mean()
    assert float(kl) < max_kl * 2


@pytest.mark.skipif(native.load() is None, reason="no C++ compiler: the native step is not built")
@pytest.mark.parametrize("bits", [8, 4])
def test_native_decode_serves_quantized_weights_like_the_python_step(float_run, bits, monkeypatch):
    out = float_run / f"qn{bits}"
    quantize_run(float_run / "float", out, bits, group_size=32, head_bits=bits)
    model, tok, _ = load_model(out)
    assert native.pack(model) is not None  # (an int4 head of 15 outputs: its dequantized weight)
    prompts = [tok.encode_prompt(p) for p in ("ka", "rimo", "", "anel")]
    rule = DecodeRule(temperature=1.0)
    a = generate(model, prompts, 12, rule, tok.eos_id, tok.pad_id, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(native, "pack", lambda m, rows=None: None)  # the Python step, the reference
    b = generate(model, prompts, 12, rule, tok.eos_id, tok.pad_id, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.sampling_logprobs, b.sampling_logprobs, atol=1e-4)


def test_dynamic_precision_keeps_exactly_the_most_sensitive_layers(float_run):
    out = float_run / "dyn"
    r = quantize_run(float_run / "float", out, 4, group_size=32, keep_budget=0.3)
    sens = r["sensitivity_kl"]
    layout = json.loads((out / "quantization.json").read_text())["layers"]
    f, _, _ = load_model(float_run / "float")
    sizes = {n: f.get_submodule(n).weight.numel() for n in sens}
    total, used, expected = sum(sizes.values()), 0, []
    for n in sorted(sens, key=lambda n: -sens[n]):  # greedy down the ranking, within the budget
        if used + sizes[n] <= 0.3 * total:
            expected.append(n)
            used += sizes[n]
    assert expected and sorted(r["kept"]) == sorted(expected)
    for n in sens:  # kept layers one step up: 4 -> 8 bits (the head was at 8: kept -> float32)
        default = 8 if n == "lm_head" or n.endswith("mlp.proj") else 4
        want = (None if default == 8 else 8) if n in expected else default
        assert layout.get(n) == want, n
    plain = quantize_run(float_run / "float", float_run / "plain4", 4, group_size=32)
    assert r["kl"] < plain["kl"]  # closer to float32 than uniform int4


def test_quantize_cli_json_and_one_line_errors(float_run, tmp_path, capsys):
    assert main(["quantize", str(float_run / "float"), "--out", str(tmp_path / "q"), "--bits", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # the SwiGLU's 176 hidden inputs: no group of 32 divides them, so those two layers get 8 bits
    assert r["bits"] == 4 and r["layers"] == {"4": 6, "8": 3} and 0 <= r["kl"] < 0.1 and r["params"] > 0
    assert r["fallback_8bit"] == ["blocks.0.mlp.proj", "blocks.1.mlp.proj"]
    s = main(["sample", str(tmp_path / "q"), "--n", "3", "--json"])
    assert s == 0 and len(json.loads(capsys.readouterr().out)["samples"]) == 3
    cases = [
        (["quantize", str(float_run / "float"), "--out", str(tmp_path / "a"), "--bits", "3"], "--bits must be 8 or 4"),
        (["quantize", str(float_run / "float"), "--out", str(tmp_path / "b"), "--bits", "4", "--group-size", "48"],
         "--group-size must be one of 32, 64, 128, 256"),
        (["quantize", str(tmp_path / "q"), "--out", str(tmp_path / "c")], "already quantized"),
        (["quantize", str(float_run / "float"), "--out", str(tmp_path / "q")], "already exists"),
        (["quantize", str(float_run / "float"), "--out", str(tmp_path / "d"), "--keep-budget", "1.5"],
         "--keep-budget must be in [0, 1)"),
    ]
    for argv, fragment in cases:
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and fragment in err and "\n" not in err, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_qlora_trains_adapters_on_the_frozen_quantized_weights(float_run):
    """SFT with LoRA on a 4-bit run: the quantized weights never move, the merged result is
    the dequantized base plus a rank-r update per wrapped layer (the head, not wrapped,
    exactly its dequantized weight), and the data's loss falls. Full fine-tuning of a
    quantized run is refused in one line."""
    from conftest import tiny_words
    from seqlab.errors import SeqlabError
    from seqlab.post.config import load_post_config
    from seqlab.post.sft import run_sft

    q = float_run / "q4"
    if not q.exists():
        quantize_run(float_run / "float", q, 4, group_size=32)
    data = float_run / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": w[:2], "completion": w[2:] + "ka"}) for w in tiny_words(64)))
    over = {"policy": str(q), "data": str(data), "out": str(float_run / "qlora"), "steps": 40, "batch_size": 16,
            "lr": 1e-2, "lora_rank": 4, "lora_merge": True}
    with pytest.raises(SeqlabError, match="QLoRA"):
        run_sft(load_post_config(None, {**over, "lora_rank": 0}), progress=False)
    before, tok, _ = load_model(q)
    qbytes = {n: b.clone() for n, b in before.named_buffers() if n.endswith(("qweight", "scales", "zeros"))}
    run_sft(load_post_config(None, over), progress=False)
    after, _, _ = load_model(float_run / "qlora")  # an ordinary float run
    assert not any(isinstance(m, QuantLinear) for m in after.modules())
    again, _, _ = load_model(q)
    assert all(torch.equal(b, qbytes[n]) for n, b in again.named_buffers() if n in qbytes)
    assert torch.equal(after.lm_head.weight, again.lm_head.dequantized())
    for name in ("blocks.0.attn.qkv", "blocks.1.mlp.gate_up"):
        delta = after.get_submodule(name).weight - again.get_submodule(name).dequantized()
        assert 0 < int(torch.linalg.matrix_rank(delta, atol=1e-5)) <= 4, name
    rows = [json.loads(x) for x in data.read_text().splitlines()]

    def nll(model):
        from seqlab.post.common import sequence_logprobs
        from seqlab.post.data import pad_batch
        from seqlab.post.prompting import prompt_format

        fmt = prompt_format(tok, False, "")
        ids, mask = pad_batch([fmt.pair(r["prompt"], r["completion"], 24) for r in rows], tok.pad_id)
        with torch.no_grad():
            return float(-sequence_logprobs(model, ids, mask).sum() / mask[:, 1:].sum())

    assert nll(after) < 0.8 * nll(again)


def test_import_keep_quantized_keeps_a_q4_1_files_4_bit_values(tmp_path, capsys):
    """A GGUF of Q4_1 blocks becomes a 4-bit run whose values are the file's own nibbles."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader
    from test_import_gguf import hf_weights, tiny_vocab, write_gguf

    tokens, _ = tiny_vocab()
    path = write_gguf(tmp_path / "tiny.gguf", hf_weights(len(tokens), tied=False), Q.Q4_1)
    assert main(["import", str(path), "--out", str(tmp_path / "q"), "--keep-quantized", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["quantized"]["bits"] == 4 and r["quantized"]["top1_agreement"] > 0.9
    model, _, _ = load_model(tmp_path / "q")
    down = model.blocks[1].mlp.proj
    assert isinstance(down, QuantLinear) and down.bits == 4
    raw = next(t for t in GGUFReader(path).tensors if t.name == "blk.1.ffn_down.weight")
    blocks = np.asarray(raw.data).reshape(-1, 20)  # Q4_1: float16 scale, float16 min, 16 bytes of nibbles
    nibbles = np.concatenate([blocks[:, 4:] & 0x0F, blocks[:, 4:] >> 4], 1)  # ggml: low nibbles first
    ours = unpack_nibbles(down.qweight).numpy().reshape(-1, 32)
    assert np.array_equal(ours, nibbles)
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32).ravel()
    assert np.allclose(down.scales.float().numpy().ravel(), scale, rtol=2 ** -8)


def test_qlora_kept_apart_stays_quantized_and_loads_as_base_plus_adapter(float_run):
    """QLoRA's default (post.lora_merge unset: false on a quantized base): the run keeps the
    base's quantized buffers bit for bit (no float copy), its adapter loads back exactly, the
    loaded model computes what the merged float model computes (within the int4 kernel's bf16
    activations), and a run kept apart is refused as a policy or a quantize source in one line."""
    from conftest import tiny_words
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file
    from seqlab.errors import SeqlabError
    from seqlab.models.lora import merge_lora
    from seqlab.post.config import load_post_config
    from seqlab.post.sft import run_sft

    q = float_run / "q4"
    if not q.exists():
        quantize_run(float_run / "float", q, 4, group_size=32)
    data = float_run / "sft-apart.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": w[:2], "completion": w[2:] + "ka"}) for w in tiny_words(64)))
    out = float_run / "qlora-apart"
    over = {"policy": str(q), "data": str(data), "out": str(out), "steps": 20, "batch_size": 16, "lr": 1e-2,
            "lora_rank": 4}  # lora_merge unset: a quantized base is kept apart
    run_sft(load_post_config(None, over), progress=False)
    assert json.loads((out / "quantization.json").read_text()) == json.loads((q / "quantization.json").read_text())
    assert json.loads((out / "adapter.json").read_text())["rank"] == 4
    base, _, _ = load_model(q)
    apart, tok, _ = load_model(out)
    wrapped = [m for m in apart.modules() if isinstance(m, LoraLayer)]
    assert wrapped and all(isinstance(m.get_base_layer(), QuantLinear) for m in wrapped)
    base_buffers = dict(base.named_buffers())
    for n, b in apart.named_buffers():
        if n.endswith(("qweight", "scales", "zeros")):
            assert torch.equal(b, base_buffers[n.replace(".base_layer", "")]), n
    saved = load_file(str(out / "adapter.safetensors"))
    params = dict(apart.named_parameters())
    assert saved and all(torch.equal(params[k.replace(".weight", ".default.weight")], v) for k, v in saved.items())
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if "lora_B" in k)  # B starts at 0: it trained
    ids = torch.tensor([tok.encode("kaname")[:8]])
    got = torch.log_softmax(_logits(apart, ids), -1)
    ref = torch.log_softmax(_logits(merge_lora(load_model(out)[0]), ids), -1)
    without = torch.log_softmax(_logits(base, ids), -1)
    kl = float((ref.exp() * (ref - got)).sum(-1).mean())
    assert kl < 1e-3 and bool((got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9), kl
    assert float((ref.exp() * (ref - without)).sum(-1).mean()) > 10 * kl  # the adapter is what is computed
    with pytest.raises(SeqlabError, match="base \\+ adapter"):
        run_sft(load_post_config(None, {**over, "policy": str(out), "out": str(float_run / "again")}), progress=False)
    with pytest.raises(SeqlabError, match="base \\+ adapter"):
        quantize_run(out, float_run / "requant", 4, group_size=32)
