"""Transformer building blocks: norms, rotary positions, MLPs.

Shared maths is written once here and tested against hand-computed cases.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_norm(kind: str, dim: int, bias: bool, eps: float = 0.0) -> nn.Module:
    """eps 0: seqlab's defaults (1e-6 for RMSNorm, torch's 1e-5 for LayerNorm)."""
    if kind == "rmsnorm":
        # torch's RMSNorm: x / sqrt(mean(x^2) + eps) * weight
        return nn.RMSNorm(dim, eps=eps or 1e-6)
    return nn.LayerNorm(dim, bias=bias, eps=eps or 1e-5)


def norm_fn(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a LayerNorm/RMSNorm module functionally (the decode loop skips
    Module.__call__ overhead, which is a large share of a small model's step)."""
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a linear layer in the decode loop: a plain nn.Linear runs functionally
    (no Module.__call__ overhead); anything else (e.g. a peft LoRA wrapper) is called,
    so adapters are never bypassed while sampling."""
    if type(layer) is nn.Linear:
        return F.linear(x, layer.weight, layer.bias)
    return layer(x)


def linear_residual(layer: nn.Module, x: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """resid + layer(x) for the decode loop. A plain bias-free nn.Linear does it in one
    addmm (F.linear takes the 2-D residual as its bias): one op fewer per residual."""
    if type(layer) is nn.Linear and layer.bias is None:
        return F.linear(x, layer.weight, resid)
    return resid + linear(layer, x)


def rope_tables(head_dim: int, max_len: int, base: float = 10000.0):
    """cos/sin tables (max_len, head_dim/2) for rotary position embeddings (RoPE).

    Pair i of a head vector rotates by angle pos * base^(-2i/head_dim)
    (Su et al. 2021).
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) with cos/sin broadcastable to (B, H, T, D/2).

    "Half-split" convention (GPT-NeoX / Llama in Hugging Face): the pairs are
    (x[i], x[i + D/2]), not adjacent elements.
    """
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool, dropout: float, approximate: str = "none"):
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        # exact (erf) GELU by default: on a CPU it costs half the tanh approximation's time;
        # "tanh" for models trained with it (GPT-2)
        self.approximate = approximate

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))

    def decode(self, x, resid):
        """resid + MLP(x), eval-time and functional: no dropout, no module-call overhead."""
        return linear_residual(self.proj, F.gelu(linear(self.fc, x), approximate=self.approximate), resid)


class SwiGLU(nn.Module):
    """down(silu(x W_gate) * (x W_up)) (Shazeer 2020); gate and up share one matmul."""

    def __init__(self, dim: int, hidden: int, bias: bool, dropout: float):
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=bias)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.dropout(self.proj(F.silu(gate) * up))

    def decode(self, x, resid):
        """resid + SwiGLU(x), eval-time and functional."""
        gate, up = linear(self.gate_up, x).split(self.hidden, dim=-1)
        return linear_residual(self.proj, F.silu(gate) * up, resid)


class FrozenLinear(torch.nn.Linear):
    """An nn.Linear whose weight is frozen (a LoRA base, the head): under autocast it casts
    that weight to the autocast dtype once and keeps the copy, where autocast itself casts a
    weight that needs no gradient again at every call (its cache holds only leaves that need
    one). A SmolLM2 GRPO step calls each base layer twice per micro-batch (the prompt once,
    the completions), so that was 16 float32 -> bf16 copies of the model per update. The copy
    is remade when the weight changes (its version counter) and dropped by release()."""

    _cast: torch.Tensor | None = None
    _cast_key: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if self.weight.requires_grad or not torch.is_autocast_enabled(device):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device)
        w = self.autocast_weight(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return F.linear(x.to(dtype), w, bias)

    def autocast_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in `dtype`, cast once while it stays unchanged."""
        key = (dtype, self.weight._version, self.weight.data_ptr())
        if self._cast_key != key:
            # a normal tensor even when first asked for inside inference mode (the sampler's
            # native step): training saves it for the backward afterwards
            with torch.inference_mode(False):
                self._cast, self._cast_key = self.weight.detach().to(dtype), key
        return self._cast

    def release(self) -> torch.nn.Linear:
        """Back to a plain nn.Linear (the copy freed)."""
        self.__dict__.pop("_cast", None)
        self.__dict__.pop("_cast_key", None)
        self.__class__ = torch.nn.Linear
        return self


def release_frozen(model: torch.nn.Module) -> None:
    for m in model.modules():
        if type(m) is FrozenLinear:
            m.release()
