"""seqlab's native (C++) kernels for the Transformer on CPUs, built on first use.

`native/decode.cpp` runs one `Transformer.step` as a single call (see its header for
why), draws one token per row for the sampler's rules that truncate nothing, and runs the
sampler's whole loop for those rules (`loop`). `native/attention.cpp` is causal
self-attention over whole sequences, forward and backward (`causal_attention`, an
autograd.Function), used by the Transformer for training, scoring and prefill. The library
is compiled once per machine with torch.utils.cpp_extension (about 30 s on a 2-core CPU;
torch caches it in its extensions folder, ~/.cache/torch_extensions by default) and then
loaded in each process. Without a C++ compiler, or with the environment variable
SEQLAB_NATIVE=0, the Python code runs instead: same results up to float rounding.

`pack(model)` decides per generation whether the native step applies: CPU, float32,
eval mode, no gradients, nn.Linear layers plain or wrapped by peft's LoRA (the step adds
the adapter's low-rank product, so adapters are never bypassed; other wrappers keep the
Python path), and LayerNorm/RMSNorm with GELU (exact or tanh)
or SwiGLU, with or without biases, QK-norm and heads wider than n_embd / n_head: every
Transformer seqlab builds or imports (Llama, SmolLM2, Qwen2, Qwen3, GPT-2). `attention_applies(q)` decides per call for attention:
float32 CPU heads of a multiple of 8 dims, T x D within ATTENTION_MAX_TD, and no attention
dropout (the Transformer checks that).

At batches up to PACKED_MAX_ROWS the step's float32 products run from packed copies of the
weights (`packed_weight`; decode.cpp's packed_mm, 1.9x faster generation at batch 8 on
SmolLM2): one more copy of the linear weights in memory while the model lives, made at the
first such generation and again after the weights change."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

NATIVE_DIR = Path(__file__).with_name("native")
SOURCES = [NATIVE_DIR / "decode.cpp", NATIVE_DIR / "attention.cpp"]
HEADERS = [NATIVE_DIR / "vec.h"]
_lock = threading.Lock()
_state: dict = {}  # "op": the loaded ops namespace, or None after a failed build


def enabled() -> bool:
    return os.environ.get("SEQLAB_NATIVE", "1") != "0"


def load():
    """The ops namespace (torch.ops.seqlab: decode_step, sample_rows), building the library
    if needed; None if it cannot be built."""
    if not enabled():
        return None
    with _lock:
        if "op" not in _state:
            _state["op"] = _build()
        return _state["op"]


def cpu_features() -> str:
    """The CPU's instruction-set features as the kernel reports them (x86 'flags', ARM
    'Features' in /proc/cpuinfo), sorted; elsewhere the platform's processor description."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return " ".join(sorted(set(value.split())))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def build_name(features: str) -> str:
    """The -march=native build's name, keyed by the CPU's features: torch's extension cache
    (~/.cache/torch_extensions, maybe a home folder shared by cluster nodes or a container
    image built elsewhere) then never hands a library built for one CPU to another CPU that
    lacks its instructions (that would be SIGILL, not a Python error)."""
    return "seqlab_native_" + hashlib.sha1(features.encode()).hexdigest()[:12]


def _build():
    from torch.utils import cpp_extension

    if hasattr(torch.ops.seqlab, "causal_attention"):  # already registered in this process
        return torch.ops.seqlab
    try:  # the ninja wheel (a dependency) may sit outside PATH, e.g. in a venv run without activation
        import ninja

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    errors = []
    # -march=native lets the compiler vectorise the attention loops for this CPU; the
    # library is built on the machine that runs it. Plain -O3 is the fallback. torch
    # rebuilds when a source or a flag changes, not a header: the headers' hash is a flag.
    header_hash = hashlib.sha1(b"".join(h.read_bytes() for h in HEADERS)).hexdigest()[:12]
    native_name = build_name(cpu_features())
    _say_if_first_build(cpp_extension, native_name)
    # torch logs its own multi-line compiler warnings; the one line below says what matters
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        for name, flags in ((native_name, ["-O3", "-march=native", "-fopenmp"]),
                            ("seqlab_native_generic", ["-O3"])):
            try:
                cpp_extension.load(name=name, sources=[str(f) for f in SOURCES],
                                   extra_cflags=flags + [f"-DSEQLAB_HEADERS={header_hash}"],
                                   is_python_module=False, verbose=False)
                return torch.ops.seqlab
            except Exception as err:  # no compiler, unsupported flag, read-only cache, ...
                lines = str(err).strip().splitlines() or [""]
                # the compiler's own complaint, not ninja's closing "build stopped" line
                cause = next((ln for ln in lines if any(k in ln for k in ("error:", "not found", "No such file"))),
                             lines[-1])
                errors.append(f"{type(err).__name__}: {cause.strip()[:200]}")
    finally:
        torch_log.setLevel(level)
    warnings.warn("seqlab: native decode step unavailable, using the Python step (" + "; ".join(errors) + ")",
                  RuntimeWarning, stacklevel=3)
    return None


def _say_if_first_build(cpp_extension, name):
    """One line on stderr before a build, so a first `seqlab sample` that pauses is explained."""
    try:
        built = Path(cpp_extension._get_build_directory(name, False), name + ".so")
        fresh = built.exists() and all(built.stat().st_mtime >= f.stat().st_mtime for f in SOURCES + HEADERS)
    except Exception:  # a private torch helper: never let it stop sampling
        return
    if not fresh:
        # tqdm.write moves an open progress bar (training's) below the line instead of splitting it
        from tqdm import tqdm

        tqdm.write("seqlab: compiling the native kernels (once per machine, ~30 s)", file=sys.stderr)


@dataclass(frozen=True)
class NativeWeights:
    """The model's tensors in decode_step's argument order (references, not copies:
    an optimizer's in-place updates are seen by the next generation; under bf16_weights the
    linear weights are bf16 copies, made anew for each generation)."""

    op: object
    wte: torch.Tensor
    wpe: torch.Tensor | None
    rope_cos: torch.Tensor | None
    rope_sin: torch.Tensor | None
    layers: list
    final: list
    n_head: int
    n_kv_head: int
    head_dim: int
    norm_kind: int
    eps: float
    mlp_kind: int


def _norm_parts(norm):
    if isinstance(norm, nn.LayerNorm):
        return 0, norm.eps, [norm.weight, norm.bias]
    if isinstance(norm, nn.RMSNorm) and norm.eps is not None:
        return 1, norm.eps, [norm.weight, None]
    return None


def _mlp_kind(mlp) -> int:
    """decode.cpp's mlp_kind: 0 exact GELU, 1 SwiGLU, 2 tanh GELU (GPT-2)."""
    from .layers import SwiGLU

    if isinstance(mlp, SwiGLU):
        return 1
    return 2 if getattr(mlp, "approximate", "none") == "tanh" else 0


def _plain_linear(m):
    """(layer, None) for a plain linear layer (nn.Linear or a QuantLinear on the CPU); (its base layer, (A, scale * B)) for a peft LoRA layer with one active, unmerged
    adapter and no dropout at work (decode.cpp adds the low-rank product itself, so sampling
    stays exact and fast while the adapter trains); None for anything else."""
    from .layers import FrozenLinear
    from .quant import QuantLinear

    if type(m) in (nn.Linear, FrozenLinear) or (type(m) is QuantLinear and m.qweight.device.type == "cpu"):
        return m, None
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return None
    if type(m) is not LoraLinear or m.merged or m.disable_adapters or len(m.active_adapters) != 1:
        return None
    name = m.active_adapters[0]
    base = m.get_base_layer()
    if (_plain_linear(base) is None or name in getattr(m, "lora_variant", {}) or m.use_dora.get(name)
            or m.lora_bias.get(name) or (m.training and not isinstance(m.lora_dropout[name], nn.Identity))):
        return None
    a, b = m.lora_A[name].weight, m.lora_B[name].weight
    return base, (a.detach(), (b * m.scaling[name]).detach().contiguous())


# the dtype pack() gives the plain (float32) linear weights: bf16 while sampling under CPU bf16
# autocast (post.dtype = "bfloat16"; sampling.generate sets it)
_linear_dtype = contextvars.ContextVar("seqlab_native_linear_dtype", default=torch.float32)


@contextlib.contextmanager
def bf16_weights():
    """Within this block, pack() hands decode.cpp bf16 copies of the float32 linear weights
    (embedding, norms, biases, LoRA adapters and the KV cache stay float32): its matmuls run
    in bf16 (2.2-2.7x float32's speed on a CPU with AVX512-BF16, benchmarks/results.md)."""
    token = _linear_dtype.set(torch.bfloat16)
    try:
        yield
    finally:
        _linear_dtype.reset(token)


# decode.cpp's kPackedMaxRows: its packed kernel serves products of at most this many rows
PACKED_MAX_ROWS = 16
_packed_copies = None  # weight -> (key, packed copy); made on first use
_optimizer_steps = [0]  # optimizer steps taken in this process, counted by a global post-step hook


def _copy_fits(nbytes: int) -> bool:
    """Whether a second copy of `nbytes` of weights stays within a quarter of this machine's
    memory: a model that fills much of it samples from its own weights (at::mm) rather than
    risk running out for a 1.3-1.9x faster step."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no way to tell, so no copy
        return False
    return nbytes <= total // 4


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """decode.cpp's packed copy of a float32 weight (out, in): (ceil(out / 16), in, 16), output
    columns in blocks of 16, k-major (packed_mm says why). Made again when the weight may
    have changed: its version counter moved (in-place ops), its storage moved, or, for a
    weight that trains, any optimizer stepped (torch's fused AdamW, seqlab's optimizer,
    updates weights without moving their version counters). A frozen weight (a LoRA base)
    keeps its copy across updates; the copy goes when the weight does."""
    global _packed_copies
    if _packed_copies is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from torch.utils.weak import WeakIdKeyDictionary

        def count_step(*_):
            _optimizer_steps[0] += 1

        register_optimizer_step_post_hook(count_step)
        _packed_copies = WeakIdKeyDictionary()
    key = (weight._version, weight.data_ptr(), _optimizer_steps[0] if weight.requires_grad else None)
    hit = _packed_copies.get(weight)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        n, k = weight.shape
        blocks = -(-n // 16)
        padded = weight.detach()
        if blocks * 16 != n:
            padded = torch.cat([padded, padded.new_zeros(blocks * 16 - n, k)])
        packed = padded.view(blocks, 16, k).transpose(1, 2).contiguous()
    _packed_copies[weight] = (key, packed)
    return packed


def pack(model, rows: int | None = None) -> NativeWeights | None:
    """The native step's view of `model`, or None when the Python step must run. `rows`: the
    batch the step will run at; up to PACKED_MAX_ROWS, float32 weights come with their packed
    copies (one more copy of the weights in memory, made once) for decode.cpp's packed_mm."""
    from .layers import FrozenLinear, SwiGLU

    wte = model.wte.weight
    # under CPU autocast (post.dtype = "bfloat16") the prefill wrote bf16 keys and values:
    # the float32 kernel does not serve them
    if wte.device.type != "cpu" or model.training or torch.is_autocast_enabled("cpu"):
        return None
    if getattr(model, "moe_layers", None):  # decode.cpp runs dense MLPs only
        return None
    params = list(model.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return None
    norms = [model.norm_f] + [n for b in model.blocks for n in (b.norm1, b.norm2)]
    parts = [_norm_parts(n) for n in norms]
    if any(p is None for p in parts) or len({(k, e) for k, e, _ in parts}) != 1:
        return None
    linears = [model.lm_head]
    for b in model.blocks:
        mlp = b.mlp
        linears += [b.attn.qkv, b.attn.proj, mlp.gate_up if isinstance(mlp, SwiGLU) else mlp.fc, mlp.proj]
    plain = [_plain_linear(m) for m in linears]
    if any(p is None for p in plain) or plain[0][1] is not None:
        return None  # a wrapper the native step cannot compute: keep it in the loop
    attn = model.blocks[0].attn
    if attn.q_norm is not None and any(_norm_parts(n) is None or _norm_parts(n)[1] != parts[0][1]
                                       for b in model.blocks for n in (b.attn.q_norm, b.attn.k_norm)):
        return None  # decode.cpp's QK-norm is an RMSNorm with the blocks' eps
    ops = load()
    if ops is None:
        return None
    empty = wte.new_empty(0)
    linear_dtype = _linear_dtype.get()
    float_bytes = sum(lin.weight.nbytes for lin, _ in plain if type(lin) in (nn.Linear, FrozenLinear))
    packs = (linear_dtype == torch.float32 and rows is not None and rows <= PACKED_MAX_ROWS
             and ops.packed_width() > 0 and _copy_fits(float_bytes))

    def w(t):
        return empty if t is None else t.detach()

    def weight(lin):
        """decode.cpp's (weight, aux): a float32 weight has no aux; a quantized layer no kernel
        serves (an int4 head of a vocabulary not a multiple of 16) gives its dequantized weight"""
        if type(lin) is FrozenLinear and linear_dtype != torch.float32:  # its copy, made once
            return lin.autocast_weight(linear_dtype), empty
        if type(lin) in (nn.Linear, FrozenLinear):
            return lin.weight.detach().to(linear_dtype), packed_weight(lin.weight) if packs else empty
        return lin.kernel() or (lin.dequantized(), empty)

    layers = []
    for i, b in enumerate(model.blocks):
        qkv, proj, fc, mproj = plain[1 + 4 * i: 5 + 4 * i]  # (nn.Linear, LoRA (A, scaled B) or None)
        n1, n2 = parts[1 + 2 * i][2], parts[2 + 2 * i][2]
        wa = [weight(lin) for lin, _ in (qkv, proj, fc, mproj)]
        layers += [w(t) for t in (n1[0], n1[1], wa[0][0], qkv[0].bias, wa[1][0], proj[0].bias,
                                  n2[0], n2[1], wa[2][0], fc[0].bias, wa[3][0], mproj[0].bias,
                                  b.attn.q_norm.weight if b.attn.q_norm is not None else None,
                                  b.attn.k_norm.weight if b.attn.k_norm is not None else None)]
        for _, lora in (qkv, proj, fc, mproj):
            layers += [empty, empty] if lora is None else list(lora)
        layers += [aux for _, aux in wa]
    rope = model.wpe is None
    return NativeWeights(
        op=ops.decode_step, wte=wte.detach(), wpe=None if rope else model.wpe.weight.detach(),
        rope_cos=model.rope_cos if rope else None, rope_sin=model.rope_sin if rope else None,
        layers=layers, final=[w(parts[0][2][0]), w(parts[0][2][1]), *weight(plain[0][0])],
        n_head=attn.n_head, n_kv_head=attn.n_kv_head, head_dim=attn.head_dim, norm_kind=parts[0][0],
        eps=float(parts[0][1]), mlp_kind=_mlp_kind(model.blocks[0].mlp),
    )


def step(nw: NativeWeights, tokens, cache):
    """Logits (B, V) for `tokens` (B,) at cache.pos; writes the cache like Transformer.step."""
    row_pos = None if cache.offset is None else cache.pos - cache.offset
    return nw.op(tokens, row_pos, cache.pos, nw.wte, nw.wpe, nw.rope_cos, nw.rope_sin, nw.layers, nw.final,
                 cache.k, cache.v, cache.key_mask, nw.n_head, nw.n_kv_head, nw.head_dim, nw.norm_kind, nw.eps,
                 nw.mlp_kind, cache.window)


def loop(nw: NativeWeights, logits, uniforms, temperature: float, eos_id: int, eos_check: int, cache):
    """decode_loop: sampling.generate's loop in one call for rules that truncate nothing.
    Returns (tokens, model log-probs, sampling log-probs), (B, n) each for the n drawn
    tokens, and moves cache.pos on by n - 1 like n - 1 calls of Transformer.step."""
    ops = load()
    tokens, model_lp, sample_lp = ops.decode_loop(
        logits, uniforms, temperature, eos_id, eos_check, cache.offset, cache.pos, nw.wte, nw.wpe, nw.rope_cos,
        nw.rope_sin, nw.layers, nw.final, cache.k, cache.v, cache.key_mask, nw.n_head, nw.n_kv_head,
        nw.head_dim, nw.norm_kind, nw.eps, nw.mlp_kind, cache.window)
    cache.pos += tokens.size(1) - 1
    return tokens, model_lp, sample_lp


def sampler(logits: torch.Tensor):
    """sample_rows(logits, uniform (B, 1), temperature) -> (tokens, model log-probs, sampling
    log-probs), each (B, 1), for float32 CPU logits; None where the Python draw must run."""
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.dim() != 2:
        return None
    ops = load()
    return None if ops is None else ops.sample_rows


class _CausalAttention(torch.autograd.Function):
    """native/attention.cpp's forward and backward as one autograd node."""

    @staticmethod
    def forward(ctx, q, k, v, scale, starts):
        ops = load()
        if ops is None:
            raise RuntimeError("seqlab: native attention unavailable (no C++ compiler, or SEQLAB_NATIVE=0)")
        out, lse = ops.causal_attention(q, k, v, scale, starts)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.starts = scale, starts
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.seqlab.causal_attention_backward(dout, q, k, v, out, lse, ctx.scale, ctx.starts)
        return dq, dk, dv, None, None


# Up to this many floats per head (T x D) the native attention beat SDPA's flash kernel on
# a 2-core AMD EPYC (fwd + bwd: 3.3x at T 66 x D 16, 2.0x at 256 x 16, 1.45x at 256 x 32,
# 1.35x at 128 x 64); at 512 x 64 it was 0.65x (its per-head buffers outgrow the caches).
ATTENTION_MAX_TD = 8192


def attention_applies(q: torch.Tensor, upcast: bool = False) -> bool:
    """Whether causal_attention should take these queries (B, H, T, D): float32 (or, with
    upcast, bf16/fp16 the caller casts to float32) on the CPU, head size a multiple of 8,
    T x D within ATTENTION_MAX_TD, and the library built."""
    floats = (torch.float32, torch.bfloat16, torch.float16) if upcast else (torch.float32,)
    return (q.device.type == "cpu" and q.dtype in floats and q.size(-1) % 8 == 0
            and q.size(-2) * q.size(-1) <= ATTENTION_MAX_TD and load() is not None)


def causal_attention(q, k, v, starts: torch.Tensor | None = None):
    """softmax(q k^T / sqrt(D) + causal mask) v for (B, H, T, D) queries and (B, Hkv, T, D)
    keys and values, differentiable; the same as scaled_dot_product_attention(...,
    is_causal=True, enable_gqa=True) up to float rounding. Check attention_applies first.
    starts (B, T) int32, for rows that pack several sequences: query i sees keys
    starts[b, i]..i only (the mask of segment_mask(starts))."""
    return _CausalAttention.apply(q, k, v, q.size(-1) ** -0.5, starts)


def segment_mask(starts: torch.Tensor) -> torch.Tensor:
    """The boolean attention mask (B, 1, T, T) of packed rows: query i sees keys
    starts[b, i] <= j <= i (what causal_attention does with `starts`)."""
    j = torch.arange(starts.size(1), device=starts.device)
    return ((j[None, None, :] >= starts[:, :, None]) & (j[None, None, :] <= j[None, :, None])).unsqueeze(1)
