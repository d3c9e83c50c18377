"""Hugging Face model configs and weights <-> seqlab's Transformer.

One Transformer class serves every imported architecture: what a family needs beyond
seqlab's defaults is a ModelConfig option (norm_eps, rope_base, head_dim, qkv_bias,
qk_norm, gelu = "tanh"). Families:

    llama, mistral   RMSNorm, RoPE, SwiGLU, GQA, optional tied embeddings and biases
    qwen2            the same with biases on q, k, v only
    qwen3            the same with QK-norm (RMSNorm over each head) and explicit head_dim
    gpt2             LayerNorm, learned positions, tanh GELU, biases, tied embeddings;
                     its Conv1D weights are stored (in, out) and are transposed here

Anything the Transformer does not compute (RoPE scaling, a sliding window shorter than
the context, partial rotary, another activation) is refused with one line naming it,
never imported as a model that silently computes something else.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import SeqlabError

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED = LLAMA_FAMILY + ("gpt2",)


def _refuse(src: str, what: str) -> None:
    raise SeqlabError(f"{src}: {what} is not supported by seqlab's Transformer")


def _rope_theta(hf: dict, src: str) -> float:
    """rope_theta, checking that no RoPE scaling is asked for (transformers 5 nests it in
    rope_parameters; 4.x has rope_theta and rope_scaling at the top)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for table in (params, scaling):
        kind = table.get("rope_type", table.get("type", "default"))
        if kind not in (None, "default"):
            _refuse(src, f"RoPE scaling '{kind}' (rope_scaling)")
        factor = table.get("partial_rotary_factor", 1.0)
        if factor != 1.0:
            _refuse(src, f"partial rotary embeddings (partial_rotary_factor = {factor})")
    return float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)


def model_config(hf: dict, src: str) -> ModelConfig:
    """A ModelConfig that computes what the Hugging Face config `hf` describes."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        arch = ", ".join(hf.get("architectures") or []) or "?"
        raise SeqlabError(f"{src}: architecture '{kind}' ({arch}) is not supported; seqlab imports "
                          f"{', '.join(SUPPORTED)}")
    if kind == "gpt2":
        return _gpt2_config(hf, src)
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        _refuse(src, f"activation '{act}' (hidden_act)")
    C, H = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or C // H
    block = hf.get("max_position_embeddings", 2048)
    window = hf.get("sliding_window")
    if kind in ("qwen2", "qwen3") and hf.get("use_sliding_window") and window:
        _refuse(src, f"sliding-window attention (use_sliding_window, window {window})")
    if any(t != "full_attention" for t in hf.get("layer_types") or []):
        _refuse(src, "sliding-window attention (layer_types)")
    if kind in ("llama", "mistral") and window and window < block:
        _refuse(src, f"sliding-window attention (sliding_window = {window} < max_position_embeddings = {block})")
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if kind == "qwen2" and (attn_bias or mlp_bias):
        _refuse(src, "biases beyond q, k, v in a qwen2 model")
    return ModelConfig(
        type="transformer", block_size=block, n_layer=hf["num_hidden_layers"], n_head=H,
        n_kv_head=hf.get("num_key_value_heads") or H, n_embd=C, n_hidden=hf["intermediate_size"],
        norm="rmsnorm", pos="rope", mlp="swiglu", rope_base=_rope_theta(hf, src),
        tie_weights=bool(hf.get("tie_word_embeddings", False)),
        # a model with biases on some linears only gets zero biases on the rest: the same maths
        bias=attn_bias or mlp_bias, head_dim=0 if head_dim * H == C else head_dim,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qkv_bias=kind == "qwen2",
        qk_norm=kind == "qwen3", dropout=0.0,
    )


def _gpt2_config(hf: dict, src: str) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}.get(act)
    if gelu is None:
        _refuse(src, f"activation '{act}' (activation_function)")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        _refuse(src, "GPT-2 attention without the 1/sqrt(head size) scale or scaled by layer index")
    C = hf["n_embd"]
    return ModelConfig(
        type="transformer", block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"], n_head=hf["n_head"],
        n_embd=C, n_hidden=hf.get("n_inner") or 4 * C, norm="layernorm", pos="learned", mlp="gelu",
        tie_weights=bool(hf.get("tie_word_embeddings", True)), bias=True,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), gelu=gelu, dropout=0.0,
    )


def _take(tensors: dict, name: str, src: str) -> torch.Tensor:
    if name not in tensors:
        raise SeqlabError(f"{src}: weight '{name}' is missing")
    return tensors.pop(name).float()


def state_dict_from_hf(hf: dict, tensors: dict, mc: ModelConfig, src: str) -> dict:
    """seqlab Transformer parameters from a Hugging Face state dict (names as saved by
    transformers). Every weight must be used: a leftover one means the model computes
    something seqlab would not, so it is an error."""
    tensors = dict(tensors)
    if hf["model_type"] == "gpt2":
        return _gpt2_from_hf(tensors, mc, src)
    out = {"wte.weight": _take(tensors, "model.embed_tokens.weight", src),
           "norm_f.weight": _take(tensors, "model.norm.weight", src)}
    out["lm_head.weight"] = out["wte.weight"] if mc.tie_weights else _take(tensors, "lm_head.weight", src)
    tensors.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
    for i in range(mc.n_layer):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        out[q + "norm1.weight"] = _take(tensors, p + "input_layernorm.weight", src)
        out[q + "norm2.weight"] = _take(tensors, p + "post_attention_layernorm.weight", src)
        a = p + "self_attn."
        out[q + "attn.qkv.weight"] = torch.cat([_take(tensors, a + f"{x}_proj.weight", src) for x in "qkv"])
        out[q + "attn.proj.weight"] = _take(tensors, a + "o_proj.weight", src)
        out[q + "mlp.gate_up.weight"] = torch.cat([_take(tensors, p + f"mlp.{x}_proj.weight", src)
                                                   for x in ("gate", "up")])
        out[q + "mlp.proj.weight"] = _take(tensors, p + "mlp.down_proj.weight", src)
        if mc.qk_norm:
            out[q + "attn.q_norm.weight"] = _take(tensors, a + "q_norm.weight", src)
            out[q + "attn.k_norm.weight"] = _take(tensors, a + "k_norm.weight", src)
        if mc.bias or mc.qkv_bias:
            out[q + "attn.qkv.bias"] = torch.cat([_bias(tensors, a + f"{x}_proj", out[q + "attn.qkv.weight"], j, mc)
                                                  for j, x in enumerate("qkv")])
        if mc.bias:
            out[q + "attn.proj.bias"] = _bias(tensors, a + "o_proj", out[q + "attn.proj.weight"])
            out[q + "mlp.gate_up.bias"] = torch.cat([_bias(tensors, p + f"mlp.{x}_proj",
                                                           out[q + "mlp.gate_up.weight"], j, halves=True)
                                                     for j, x in enumerate(("gate", "up"))])
            out[q + "mlp.proj.bias"] = _bias(tensors, p + "mlp.down_proj", out[q + "mlp.proj.weight"])
    _no_leftovers(tensors, src)
    return out


def _bias(tensors, prefix, weight, part=None, mc=None, halves=False):
    """The bias of `prefix`, or zeros of the right length (a linear that has none)."""
    b = tensors.pop(prefix + ".bias", None)
    if b is not None:
        return b.float()
    if part is None:
        n = weight.size(0)
    elif halves:
        n = weight.size(0) // 2
    else:
        D = mc.head_dim or mc.n_embd // mc.n_head
        n = (mc.n_head if part == 0 else (mc.n_kv_head or mc.n_head)) * D
    return torch.zeros(n)


def _gpt2_from_hf(tensors: dict, mc: ModelConfig, src: str) -> dict:
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()
               if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # causal-mask buffers in old files
    out = {"wte.weight": _take(tensors, "wte.weight", src), "wpe.weight": _take(tensors, "wpe.weight", src),
           "norm_f.weight": _take(tensors, "ln_f.weight", src), "norm_f.bias": _take(tensors, "ln_f.bias", src)}
    out["lm_head.weight"] = out["wte.weight"] if mc.tie_weights else _take(tensors, "lm_head.weight", src)
    tensors.pop("lm_head.weight", None)
    for i in range(mc.n_layer):
        p, q = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            for kind in ("weight", "bias"):
                out[f"{q}{ours}.{kind}"] = _take(tensors, f"{p}{theirs}.{kind}", src)
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                             ("mlp.proj", "mlp.c_proj")):
            out[f"{q}{ours}.weight"] = _take(tensors, f"{p}{theirs}.weight", src).t().contiguous()  # Conv1D: (in, out)
            out[f"{q}{ours}.bias"] = _take(tensors, f"{p}{theirs}.bias", src)
    _no_leftovers(tensors, src)
    return out


def _no_leftovers(tensors: dict, src: str) -> None:
    if tensors:
        names = sorted(tensors)
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        raise SeqlabError(f"{src}: weights seqlab's Transformer has no place for: {', '.join(names[:3])}{more}")


def hf_from_seqlab(mc: ModelConfig, state: dict, vocab_size: int) -> tuple[dict, dict]:
    """(config.json dict, state dict) of the Hugging Face model that computes the same as a
    seqlab Transformer: Llama (or Qwen2 / Qwen3 when qkv_bias / qk_norm say so) for RoPE +
    RMSNorm + SwiGLU, GPT-2 for learned positions + LayerNorm + GELU; else an error naming
    the option that has no equivalent."""
    if mc.type != "transformer":
        raise SeqlabError(f"export: a '{mc.type}' model has no Hugging Face equivalent (transformers only)")
    state = {k: v.detach().float().contiguous() for k, v in state.items()}
    llama = (mc.pos, mc.norm, mc.mlp) == ("rope", "rmsnorm", "swiglu")
    gpt2 = (mc.pos, mc.norm, mc.mlp) == ("learned", "layernorm", "gelu")
    if not (llama or gpt2):
        raise SeqlabError(f"export: pos = '{mc.pos}', norm = '{mc.norm}', mlp = '{mc.mlp}' has no Hugging Face "
                          f"equivalent (Llama: rope + rmsnorm + swiglu; GPT-2: learned + layernorm + gelu)")
    return (_llama_to_hf if llama else _gpt2_to_hf)(mc, state, vocab_size)


def _llama_to_hf(mc, state, vocab_size):
    H, Hkv = mc.n_head, mc.n_kv_head or mc.n_head
    D = mc.head_dim or mc.n_embd // H
    kind = "qwen3" if mc.qk_norm else "qwen2" if mc.qkv_bias and not mc.bias else "llama"
    if mc.qk_norm and mc.qkv_bias and not mc.bias:
        raise SeqlabError("export: qk_norm with qkv_bias (biases on q, k, v alone) has no Hugging Face equivalent")
    cfg = {"architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                              "qwen3": "Qwen3ForCausalLM"}[kind]], "model_type": kind,
           "vocab_size": vocab_size, "hidden_size": mc.n_embd, "intermediate_size": state["blocks.0.mlp.proj.weight"].size(1),
           "num_hidden_layers": mc.n_layer, "num_attention_heads": H, "num_key_value_heads": Hkv, "head_dim": D,
           "hidden_act": "silu", "max_position_embeddings": mc.block_size, "rms_norm_eps": mc.norm_eps or 1e-6,
           "rope_theta": mc.rope_base, "rope_scaling": None, "tie_word_embeddings": mc.tie_weights,
           "attention_bias": mc.bias, "mlp_bias": mc.bias, "torch_dtype": "float32"}
    if kind != "llama":
        cfg.update(use_sliding_window=False, sliding_window=None)
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["norm_f.weight"]}
    if not mc.tie_weights:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(mc.n_layer):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        out[p + "input_layernorm.weight"] = state[q + "norm1.weight"]
        out[p + "post_attention_layernorm.weight"] = state[q + "norm2.weight"]
        a = p + "self_attn."
        for x, t in zip("qkv", state[q + "attn.qkv.weight"].split([H * D, Hkv * D, Hkv * D])):
            out[a + f"{x}_proj.weight"] = t.contiguous()
        if q + "attn.qkv.bias" in state:
            for x, t in zip("qkv", state[q + "attn.qkv.bias"].split([H * D, Hkv * D, Hkv * D])):
                out[a + f"{x}_proj.bias"] = t.contiguous()
        out[a + "o_proj.weight"] = state[q + "attn.proj.weight"]
        if mc.qk_norm:
            out[a + "q_norm.weight"], out[a + "k_norm.weight"] = state[q + "attn.q_norm.weight"], state[q + "attn.k_norm.weight"]
        gate, up = state[q + "mlp.gate_up.weight"].chunk(2)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate.contiguous(), up.contiguous()
        out[p + "mlp.down_proj.weight"] = state[q + "mlp.proj.weight"]
        if mc.bias:
            out[a + "o_proj.bias"] = state[q + "attn.proj.bias"]
            gate_b, up_b = state[q + "mlp.gate_up.bias"].chunk(2)
            out[p + "mlp.gate_proj.bias"], out[p + "mlp.up_proj.bias"] = gate_b.contiguous(), up_b.contiguous()
            out[p + "mlp.down_proj.bias"] = state[q + "mlp.proj.bias"]
    return cfg, out


def _gpt2_to_hf(mc, state, vocab_size):
    if mc.n_kv_head and mc.n_kv_head != mc.n_head:
        raise SeqlabError("export: GPT-2 has no grouped-query attention (n_kv_head); use rope + rmsnorm + swiglu")
    if mc.head_dim and mc.head_dim * mc.n_head != mc.n_embd:
        raise SeqlabError("export: GPT-2 needs head_dim = n_embd / n_head")
    C = mc.n_embd
    cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab_size, "n_embd": C,
           "n_layer": mc.n_layer, "n_head": mc.n_head, "n_positions": mc.block_size,
           "n_inner": state["blocks.0.mlp.fc.weight"].size(0),
           "activation_function": "gelu_new" if mc.gelu == "tanh" else "gelu",
           "layer_norm_epsilon": mc.norm_eps or 1e-5, "tie_word_embeddings": mc.tie_weights,
           "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "torch_dtype": "float32"}

    def zeros_if_none(name, n):  # a bias-free seqlab model: GPT-2's biases are zeros
        return state.get(name, torch.zeros(n))

    out = {"transformer.wte.weight": state["wte.weight"], "transformer.wpe.weight": state["wpe.weight"],
           "transformer.ln_f.weight": state["norm_f.weight"],
           "transformer.ln_f.bias": zeros_if_none("norm_f.bias", C)}
    if not mc.tie_weights:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(mc.n_layer):
        p, q = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[f"{p}{theirs}.weight"] = state[f"{q}{ours}.weight"]
            out[f"{p}{theirs}.bias"] = zeros_if_none(f"{q}{ours}.bias", C)
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                             ("mlp.proj", "mlp.c_proj")):
            w = state[f"{q}{ours}.weight"]
            out[f"{p}{theirs}.weight"] = w.t().contiguous()  # Conv1D stores (in, out)
            out[f"{p}{theirs}.bias"] = zeros_if_none(f"{q}{ours}.bias", w.size(0))
    return cfg, out
