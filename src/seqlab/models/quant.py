"""Weight-only quantization of a transformer's linear layers (`seqlab quantize`).

8 bits: symmetric, one scale per output channel:  w = q * s,             q in [-127, 127].
4 bits: asymmetric, one scale and zero per group of `group_size` inputs of a row:
                                                   w = (q - 8) * s + z,   q in [0, 15].

Scales and zeros are bfloat16 numbers chosen before the weights are rounded, so the
dequantized weight is exactly what the kernels compute with (no second rounding).

Why these kernels: a CPU decode step is memory-bound (every weight is read once per
token), so fewer bytes per weight is the speed-up. PyTorch ships CPU kernels for both
layouts, `aten._weight_int8pack_mm` and `aten._weight_int4pack_mm_for_cpu` (the ones
torchao and gpt-fast use); measured on a Zen 5 CPU with bf16 activations they run the
SmolLM2 layer shapes 3-11x faster than the float32 matmul (with float32 activations the
int8 kernel is 4x *slower* than float32: activations go to bf16 here). The int4 kernel
takes output sizes divisible by 16 and group sizes 32..256; a layer outside that (a tiny
vocabulary's head) multiplies by its dequantized weight instead. On other devices (CUDA,
MPS) every layer does that: correct, not faster.

Files keep a portable layout (int8 rows; 4-bit values two to a byte, low nibble first);
the kernel's own packed int4 layout is built on first use. A quantized layer is frozen:
its backward gives the input's gradient through the dequantized weight (QLoRA trains
adapters on top), never a weight gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import SeqlabError

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what aten._weight_int4pack_mm_for_cpu takes


# ---------------------------------------------------------------- the number formats

def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K), scale bf16 (N,)) with w ~= q * scale, per output row."""
    w = w.detach().float()
    scale = (w.abs().amax(1) / 127).clamp(min=1e-12).to(torch.bfloat16)
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q uint8 (N, K) in [0, 15], scale bf16 (N, K/g), zero bf16 (N, K/g)) with
    w ~= (q - 8) * scale + zero over each group of g inputs of a row."""
    w = w.detach().float()
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"group size {group_size} does not divide the {K} inputs")
    g = w.view(N, K // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12).to(torch.bfloat16)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    q = torch.round((g - zero.float()[..., None]) / scale.float()[..., None]) + 8
    return q.clamp(0, 15).to(torch.uint8).view(N, K), scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    N, K = q.shape
    groups = scale.size(1)
    w = (q.view(N, groups, K // groups).float() - 8) * scale.float()[..., None] + zero.float()[..., None]
    return w.view(N, K)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(N, K) values in [0, 15] -> (N, K/2) bytes, the even input in the low nibble."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    out = torch.empty(packed.size(0), packed.size(1) * 2, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out


# ---------------------------------------------------------------- the layer

class _QuantMatmul(torch.autograd.Function):
    """y = x W^T for a frozen quantized W; backward: dx = dy W (W dequantized)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return layer.matmul(x)

    @staticmethod
    def backward(ctx, grad):
        # dx = dy W, W dequantized a block of output rows at a time: a whole float copy of a
        # large layer (the 49,152 x 576 head: 113 MB, plus the int-to-float temporaries) would
        # be the peak of a QLoRA run's memory (benchmarks/qlora_memory.py)
        layer = ctx.layer
        rows = max(1, BACKWARD_BLOCK // layer.in_features)
        if rows >= layer.out_features:
            return grad @ layer.dequantized().to(grad.dtype), None
        dx = None
        for n0 in range(0, layer.out_features, rows):
            n1 = min(n0 + rows, layer.out_features)
            part = grad[..., n0:n1] @ layer.dequantized_rows(n0, n1).to(grad.dtype)
            dx = part if dx is None else dx.add_(part)
        return dx, None


BACKWARD_BLOCK = 1 << 21  # weights (output rows x inputs) dequantized at a time in backward: 8 MB of float32


class QuantLinear(nn.Module):
    """A linear layer with 8- or 4-bit weights (see the module docstring); the bias, if
    any, stays float32."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 0, bias: bool = False):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = group_size if bits == 4 else 0
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features, dtype=torch.bfloat16))
        else:
            groups = in_features // group_size
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.bfloat16))
            self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.bfloat16))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._kernel = None  # (weight, aux) in the CPU kernel's layout, built on first use

    @classmethod
    def from_linear(cls, lin: nn.Linear, bits: int, group_size: int = 0) -> "QuantLinear":
        q = cls(lin.in_features, lin.out_features, bits, group_size, bias=lin.bias is not None)
        w = lin.weight.detach()
        if bits == 8:
            qw, q.scales = quantize_int8(w)
            q.qweight = qw
        else:
            qw, q.scales, q.zeros = quantize_int4(w, group_size)
            q.qweight = pack_nibbles(qw)
        if lin.bias is not None:
            q.bias.data.copy_(lin.bias.detach().float())
        return q.to(w.device)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{g}"

    def _load_from_state_dict(self, *args, **kwargs):
        self._kernel = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._kernel = None  # moved or cast: rebuild for the new device
        return super()._apply(fn, recurse)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (N, K) this layer computes with."""
        return self.dequantized_rows(0, self.out_features)

    def dequantized_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of the float32 weight (output channels), dequantized alone."""
        if self.bits == 8:
            return dequantize_int8(self.qweight[start:stop], self.scales[start:stop])
        return dequantize_int4(unpack_nibbles(self.qweight[start:stop]), self.scales[start:stop],
                               self.zeros[start:stop])

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(weight, aux) for the CPU kernel (also what the native decode step takes): int8
        rows and bf16 scales, or the packed int4 tensor and bf16 (K/g, N, 2) scales and
        zeros; None where no kernel serves this layer (another device, an int4 shape the
        kernel rejects)."""
        if self._kernel is None:
            if self.qweight.device.type != "cpu":
                return None
            if self.bits == 8:
                self._kernel = (self.qweight, self.scales)
            elif self.out_features % 16 == 0 and self.group_size in INT4_GROUP_SIZES and \
                    hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
                q = unpack_nibbles(self.qweight).to(torch.int32)
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
                self._kernel = (packed, torch.stack([self.scales, self.zeros], -1).transpose(0, 1).contiguous())
            else:
                self._kernel = ()
        return self._kernel or None

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        k = self.kernel()
        if k is None:
            y = F.linear(x2, self.dequantized().to(x2.dtype))
        elif self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), k[0], k[1]).to(x.dtype)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), k[0],
                                                           self.group_size, k[1]).to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _QuantMatmul.apply(x, self) if torch.is_grad_enabled() and x.requires_grad else self.matmul(x)
        return y if self.bias is None else y + self.bias


# ---------------------------------------------------------------- whole models

def quantizable_linears(model: nn.Module) -> list[str]:
    """Names of the transformer's linear layers that quantization replaces: every block's
    attention and MLP projections and the output head (embeddings and norms stay float)."""
    if not (hasattr(model, "blocks") and hasattr(model, "wte")):  # the Transformer (no import: native.py uses us)
        raise SeqlabError("quantization applies to transformer runs (this run's model is "
                          f"{type(model).__name__.lower()})")
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, QuantLinear)) and (n.startswith("blocks.") or n == "lm_head")]


def check_layout(model: nn.Module, layout: dict[str, int], group_size: int) -> None:
    """Every layer named in `layout` exists and can take its bits: 4-bit groups divide its inputs."""
    modules = dict(model.named_modules())
    for name, bits in layout.items():
        m = modules.get(name)
        if m is None:
            raise SeqlabError(f"quantization: the model has no layer '{name}'")
        if bits == 4 and (group_size < 2 or m.in_features % group_size):
            raise SeqlabError(f"quantization: group size {group_size} does not divide the {m.in_features} inputs "
                              f"of {name}")


def fit_layout(model: nn.Module, layout: dict[str, int], group_size: int) -> tuple[dict[str, int], list[str]]:
    """`layout` with every 4-bit layer whose inputs the group size does not divide moved to 8
    bits (as llama.cpp falls back for such tensors), and the names of those layers."""
    moved = [n for n, b in layout.items() if b == 4 and model.get_submodule(n).in_features % group_size]
    return {n: 8 if n in moved else b for n, b in layout.items()}, moved


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_model(model: nn.Module, layout: dict[str, int], group_size: int) -> nn.Module:
    """Replace each layer named in `layout` ({name: 8 or 4}) with its quantized version, in
    place. A head tied to the token embedding gets its own quantized copy (the embedding
    stays float: a lookup reads a few rows per token)."""
    check_layout(model, layout, group_size)
    for name, bits in layout.items():
        lin = model.get_submodule(name)
        _set_module(model, name, QuantLinear.from_linear(lin, bits, group_size))
    return model


def empty_quantized(model: nn.Module, layout: dict[str, int], group_size: int) -> nn.Module:
    """The layers of a saved quantized run, as empty shells for its weights file to fill."""
    check_layout(model, layout, group_size)
    for name, bits in layout.items():
        lin = model.get_submodule(name)
        _set_module(model, name, QuantLinear(lin.in_features, lin.out_features, bits, group_size,
                                             bias=lin.bias is not None))
    return model


def dequantize_model(model: nn.Module) -> nn.Module:
    """Every QuantLinear back to an nn.Linear holding its dequantized weight, in place (what
    `seqlab export` writes for a quantized run: the float numbers it computes with)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.qweight.device)
            with torch.no_grad():
                lin.weight.copy_(m.dequantized())
                if m.bias is not None:
                    lin.bias.copy_(m.bias)
            _set_module(model, name, lin)
    return model
