"""Read a llama.cpp GGUF file into Hugging Face terms: a config dict, float32 tensors, a tokenizer.

Format facts this module relies on (llama.cpp's `convert_hf_to_gguf.py` writes files this way):

* Metadata are typed key/value pairs. `general.architecture` names the architecture and the model's
  shape sits under that prefix (`llama.block_count`, `llama.attention.head_count`, ...); the
  tokenizer is under `tokenizer.ggml.*` (tokens, token types, merges, special token ids) and
  `tokenizer.chat_template`.
* A tensor's dims are listed fastest-moving first (ggml's ne0 is a row's length), the reverse of
  torch's order: an `nn.Linear(in, out)` weight of torch shape (out, in) is listed as [in, out].
  The `gguf` reader hands the data over row-major; quantized tensors as (rows, bytes per row).
* Quantized types pack blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) or 256 (Q2_K..Q6_K, the IQ types)
  values of a row with their own scales. Anything `gguf.quants.dequantize` handles is read (F32,
  F16, BF16 and those); other types (I8, I32, F64, ...) are refused.
* For `llama` the converter permutes each head's rows of attn_q/attn_k (weights and biases) from
  Hugging Face's rotate-half RoPE layout into llama.cpp's interleaved pairs; `_unpermute` undoes it.
  qwen2/qwen3 run llama.cpp's NeoX RoPE, which *is* rotate-half, so they are stored unpermuted.
* `output.weight` is written only when the output projection is not tied to the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import torch

from seqlab.errors import SeqlabError

# general.architecture -> (config model_type, config architectures); all use llama.cpp's llama names
_ARCHS = {
    "llama": ("llama", "LlamaForCausalLM"),  # SmolLM, Llama, Mistral
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),  # + q/k/v biases
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),  # + per-head q/k RMSNorm
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip

# tokenizer.ggml.pre -> the split regex its merges were learned with (transformers' table; other
# values keep GPT-2's built-in ByteLevel regex, as transformers does)
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"], _LLAMA3),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], _QWEN2),
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O),
    "qwen35": _QWEN35, "tekken": _TEKKEN,
}  # fmt: skip
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (gguf.TokenType)
_SPECIAL_IDS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
                "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id"}


@dataclass
class GGUFModel:
    config: dict[str, Any]  # Hugging Face config.json keys
    tensors: dict[str, torch.Tensor]  # Hugging Face parameter name -> float32 tensor
    tokenizer_json: str  # a `tokenizers` serialization (Tokenizer.from_str)
    special_tokens: dict[str, str]  # bos_token/eos_token/pad_token/unk_token -> token text, where set
    chat_template: str | None


def read_gguf(path: str | PathLike[str]) -> GGUFModel:
    """Read a llama/qwen2/qwen3 GGUF with a byte-level BPE ("gpt2") vocabulary; raise SeqlabError otherwise."""
    try:
        import gguf
    except ImportError:
        raise SeqlabError("reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:  # missing file, bad magic, unknown tensor type id
        raise SeqlabError(f"{path}: cannot read as GGUF: {' '.join(str(e).split())}") from None
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch not in _ARCHS:
        raise SeqlabError(f"{path}: GGUF architecture '{arch}' is not supported (supported: {', '.join(_ARCHS)})")

    tokens: list[str] = meta.get("tokenizer.ggml.tokens", [])
    special = {f"{name}_token": tokens[meta[key]] for name, key in _SPECIAL_IDS.items()
               if meta.get(key, len(tokens)) < len(tokens)}  # fmt: skip
    tokenizer_json = _tokenizer_json(meta, special, path)  # before the tensors: cheap checks first
    config = _config(meta, arch, {t.name: t for t in reader.tensors}, path)

    tensors: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        hf_name = _hf_name(t.name)
        if hf_name is None:
            # Llama 3.1+ files carry their RoPE scaling as per-dimension factors, not as config values
            why = " (Llama-3.1-style RoPE scaling factors)" if t.name.startswith("rope_freqs") else ""
            raise SeqlabError(f"{path}: tensor '{t.name}'{why} has no Hugging Face {arch} equivalent")
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise SeqlabError(f"{path}: tensor '{t.name}' has type {t.tensor_type.name}, "
                              "which the gguf package cannot dequantize") from None  # fmt: skip
        values = values.reshape([int(d) for d in reversed(t.shape)])  # ggml lists ne0 (a row's length) first
        if arch == "llama" and t.name.endswith((".attn_q.weight", ".attn_q.bias")):
            values = _unpermute(values, config["num_attention_heads"])
        elif arch == "llama" and t.name.endswith((".attn_k.weight", ".attn_k.bias")):
            values = _unpermute(values, config["num_key_value_heads"])
        # a copy: the reader's arrays are read-only views of the memory-mapped file
        tensors[hf_name] = torch.from_numpy(np.array(values, dtype=np.float32))
    return GGUFModel(config, tensors, tokenizer_json, special, meta.get("tokenizer.chat_template"))


def _hf_name(gguf_name: str) -> str | None:
    stem, _, leaf = gguf_name.rpartition(".")  # leaf: weight or bias
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{leaf}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{leaf}"
    return None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute`, which wrote each head's rows (first half, second half) as
    interleaved pairs: w.reshape(n_head, 2, d // 2, ...).swapaxes(1, 2)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _f32(x: float) -> float:
    # GGUF stores floats as float32: 1e-5 comes back as 9.99999974e-06; keep the decimal a config would hold
    return float(str(np.float32(x)))


def _config(meta: dict[str, Any], arch: str, tensors: dict[str, Any], path: Any) -> dict[str, Any]:
    def key(name: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise SeqlabError(f"{path}: GGUF metadata has no '{arch}.{name}'")
        return value

    if "token_embd.weight" not in tensors:  # split files (-00001-of-0000N.gguf) spread tensors over parts
        raise SeqlabError(f"{path}: no token_embd.weight tensor (one part of a split GGUF?)")
    hidden, heads = key("embedding_length"), key("attention.head_count")
    head_dim = meta.get(f"{arch}.attention.key_length") or hidden // heads
    if key("rope.dimension_count", head_dim) != head_dim:  # HF's llama/qwen rotate whole heads
        raise SeqlabError(f"{path}: RoPE over {key('rope.dimension_count')} of {head_dim} head dims is not supported")
    rope_scaling = None
    if meta.get(f"{arch}.rope.scaling.type", "none") != "none":  # linear, yarn, ...
        rope_scaling = {"rope_type": key("rope.scaling.type"), "factor": _f32(key("rope.scaling.factor"))}
        if f"{arch}.rope.scaling.original_context_length" in meta:
            rope_scaling["original_max_position_embeddings"] = key("rope.scaling.original_context_length")
    model_type, architecture = _ARCHS[arch]
    config: dict[str, Any] = {
        "model_type": model_type, "architectures": [architecture], "hidden_act": "silu",
        "hidden_size": hidden, "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"), "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads), "head_dim": head_dim,
        "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(key("rope.freq_base", 10000.0)),  # llama.cpp's default when absent
        "rope_scaling": rope_scaling, "max_position_embeddings": key("context_length"),
        "vocab_size": int(tensors["token_embd.weight"].shape[1]),  # the embedding's rows are the truth
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }  # fmt: skip
    if arch != "qwen2":  # Qwen2 always has q/k/v biases; the others say so in the config
        config["attention_bias"] = "blk.0.attn_q.bias" in tensors
    if arch == "llama":
        config["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    return config


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable bytes stand for themselves, the rest move past U+0100."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, shift = {}, 0
    for b in range(256):
        table[b] = chr(b) if b in keep else chr(256 + shift)
        shift += b not in keep
    return table


def _tokenizer_json(meta: dict[str, Any], special: dict[str, str], path: Any) -> str:
    """A byte-level BPE `tokenizers` JSON, built the way transformers' GGUF converter builds one."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2" or "tokenizer.ggml.merges" not in meta:
        raise SeqlabError(f"{path}: GGUF tokenizer '{kind}' is not supported (supported: gpt2, i.e. byte-level BPE)")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # the vocabulary is meant to be spelled in the byte alphabet; respell any token that is not
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()): i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False))  # fmt: skip
    split = _PRE_SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # fmt: skip
    tok.decoder = decoders.ByteLevel()

    # control tokens (<|im_end|>...) and the named special ones must match whole; a "control" token
    # outside the byte alphabet is a llama.cpp mislabel with no vocabulary entry, so it is skipped
    types = meta.get("tokenizer.ggml.token_type") or [0] * len(tokens)
    specials = [t for t, ttype in zip(tokens, types) if ttype == _CONTROL] + list(special.values())
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in dict.fromkeys(specials) if set(t) <= alphabet])  # fmt: skip
    # user-defined tokens (<think>...) are matched whole too, but are not special
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t, ttype in zip(tokens, types) if ttype == _USER_DEFINED and t in vocab])  # fmt: skip

    # BOS/EOS are added when the file asks for it (as llama.cpp does), with transformers' template
    add = {end: meta[f"tokenizer.ggml.{end}_token_id"] for end in ("bos", "eos")
           if meta.get(f"tokenizer.ggml.add_{end}_token") and f"{end}_token" in special}  # fmt: skip
    bos, eos = (special[f"{end}_token"] if end in add else None for end in ("bos", "eos"))
    single = f"{bos + ':0 ' if bos else ''}$A:0{' ' + eos + ':0' if eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if bos else ''} $B:1{' ' + eos + ':1' if eos else ''}"
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(special[f"{end}_token"], i) for end, i in add.items()])
    return tok.to_str()
