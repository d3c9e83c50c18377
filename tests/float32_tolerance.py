"""Tolerances for comparing two float32 computations of the same numbers.

Two correct float32 implementations of one sum differ only by rounding: each result is
within about sqrt(n) * eps * sum_i |a_i b_i| of the exact value when its n rounding errors
are independent (a random walk; Higham, "Accuracy and Stability of Numerical Algorithms",
sec. 3.1 and 2.8), and a different CPU may take another MKL kernel, another vector width
or another summation order. So the error is measured against the *scale* of the terms,
not the element (an element that cancels to ~0 carries the rounding of its large terms),
and it grows with the reduction length n and with the number of dependent reductions a
value went through (depth: each layer's matmuls, softmax and norms feed the next).

    |got - want| <= SAFETY * depth * sqrt(n) * eps32 * max|want|

SAFETY = 8 leaves room for the constant in front of the random walk and for a CPU whose
kernels round differently (measured on an Intel Xeon, Sapphire Rapids with AVX-512, over
8 seeds x 20 model shapes of tests/test_native_decode.py: the worst native-vs-Python
logits at 1/24 of this bound, the KV caches at 1/50); a real bug (a swapped head, a wrong
RoPE theta, a missing 1/sqrt(D)) gives errors of 1e-2 or more of the scale, far above it
(tests/test_native_decode.py::test_the_float32_bound_still_catches_real_bugs shows each).
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2^-23 ~ 1.19e-7
SAFETY = 8.0


def float32_bound(reduction: int, depth: int = 1) -> float:
    """The allowed error relative to the scale of the values compared."""
    return SAFETY * depth * math.sqrt(reduction) * EPS32


def scaled_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (at least 1e-30 below, so zeros compare as zeros)."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()


def assert_float32_close(got: torch.Tensor, want: torch.Tensor, reduction: int, depth: int = 1) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    err, bound = scaled_error(got, want), float32_bound(reduction, depth)
    assert err <= bound, f"error {err:.3g} of the scale exceeds the float32 bound {bound:.3g} " \
                         f"(reduction {reduction}, depth {depth})"


def transformer_bound(m, layers: int | None = None) -> float:
    """The bound for a seqlab Transformer's values computed through `layers` of it (all of
    them and the output head by default): the longest reduction is the MLP's hidden width,
    and each layer chains six (qkv, scores, p.v, proj, up, down)."""
    C, hidden = m.cfg.n_embd, m.blocks[0].mlp.proj.in_features
    layers = len(m.blocks) if layers is None else layers
    return float32_bound(max(C, hidden), depth=6 * layers + 1)
