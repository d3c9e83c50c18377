"""What-if experiments for seqlab's cached sampling (evidence for results.md).

    python benchmarks/whatif_sampling.py

Each variant monkeypatches seqlab *in this process only* (nothing under src/ is
changed) and times `seqlab.sampling.generate` at the bench_core shape (batch 64,
128 new tokens, 4 layers / 4 heads / 64 dims, context 256, 2 threads),
interleaved round-robin with the unpatched baseline:

  * math attention for 1-query steps: (q @ k^T) softmax @ v instead of SDPA's
    CPU flash kernel when the query length is 1 (decode steps);
  * inverse-CDF sampling: one uniform per row + searchsorted instead of
    torch.multinomial (which draws batch x vocab exponentials);
  * exact (erf) GELU instead of the tanh approximation (changes the model's
    function slightly: shown for the size of the effect only);
  * torch.compile(model.step, dynamic=True);
  * the first two combined, and the first two + compile;
  * and, as the yardstick, transformers `generate` (as in bench_core).

Also prints micro-timings of the ops involved.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_core as bc  # noqa: E402
from seqlab import sampling  # noqa: E402
from seqlab.models import layers, transformer  # noqa: E402

B, N, CTX, V = 64, 128, 256, 65


def rep(fn, n=2000):
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def micro():
    x = torch.randn(B, 1, 4 * 64)
    print(f"us per call: gelu tanh {rep(lambda: F.gelu(x, approximate='tanh')):.1f}, "
          f"gelu erf {rep(lambda: F.gelu(x)):.1f}  (input {tuple(x.shape)})")
    q = torch.randn(B, 4, 1, 16)
    kc, vc = torch.randn(B, 4, CTX, 16), torch.randn(B, 4, CTX, 16)
    for L in (16, 64, 128):
        k, v = kc[:, :, :L], vc[:, :, :L]
        a = rep(lambda: F.scaled_dot_product_attention(q, k, v))
        b = rep(lambda: ((q @ k.transpose(-2, -1)) * 0.25).softmax(-1) @ v)
        print(f"us per call: 1-query attention over {L:3d} cached keys: SDPA {a:.1f}, math {b:.1f}")
    p = torch.softmax(torch.randn(B, V), -1)
    g = torch.Generator().manual_seed(0)
    a = rep(lambda: torch.multinomial(p, 1, generator=g))
    b = rep(lambda: torch.searchsorted(p.cumsum(-1), torch.rand(B, 1, generator=g)).clamp_(max=V - 1))
    print(f"us per call: draw 1 token per row from ({B}, {V}) probs: multinomial {a:.1f}, inverse-CDF {b:.1f}")


ORIG_SDPA = F.scaled_dot_product_attention
ORIG_MLP = layers.GeluMLP.forward
ORIG_MULTINOMIAL = torch.multinomial


def sdpa_math(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, enable_gqa=False, **kw):
    if q.size(-2) == 1 and attn_mask is None and not enable_gqa and dropout_p == 0.0:
        return ((q @ k.transpose(-2, -1)) * (q.size(-1) ** -0.5)).softmax(-1) @ v
    return ORIG_SDPA(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p,
                     enable_gqa=enable_gqa, **kw)


def multinomial_icdf(probs, num_samples, replacement=False, *, generator=None, out=None):
    assert num_samples == 1
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device)
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=probs.size(-1) - 1)


def mlp_erf(self, x):
    return self.dropout(self.proj(F.gelu(self.fc(x))))


def main():
    torch.set_num_threads(bc.THREADS)
    micro()
    eager = bc.seqlab_transformer(V, CTX, seed=2).eval()
    compiled = bc.seqlab_transformer(V, CTX, seed=2).eval()
    compiled.step = torch.compile(compiled.step, dynamic=True)

    def variant(model, attn=False, icdf=False, erf=False):
        def run():
            transformer.F.scaled_dot_product_attention = sdpa_math if attn else ORIG_SDPA
            torch.multinomial = multinomial_icdf if icdf else ORIG_MULTINOMIAL
            layers.GeluMLP.forward = mlp_erf if erf else ORIG_MLP
            try:
                out = sampling.generate(model, [[1]] * B, N, sampling.DecodeRule(), eos_id=-1, pad_id=0,
                                        generator=torch.Generator().manual_seed(0))
                assert out.tokens.shape == (B, N)
            finally:
                transformer.F.scaled_dot_product_attention = ORIG_SDPA
                torch.multinomial = ORIG_MULTINOMIAL
                layers.GeluMLP.forward = ORIG_MLP
        return run

    variants = {
        "baseline": variant(eager),
        "math attention for 1-query steps": variant(eager, attn=True),
        "inverse-CDF sampling": variant(eager, icdf=True),
        "exact (erf) GELU": variant(eager, erf=True),
        "torch.compile(step, dynamic=True)": variant(compiled),
        "math attention + inverse-CDF": variant(eager, attn=True, icdf=True),
        "math attention + inverse-CDF + compile": variant(compiled, attn=True, icdf=True),
    }
    try:
        hf = bc.hf_gpt2(V, CTX, seed=2).eval()
    except ImportError:
        hf = None
    if hf is not None:  # the bench_core peer, timed in the same rounds
        prompt = torch.ones(B, 1, dtype=torch.long)

        def hf_gen():
            with torch.inference_mode():
                hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **bc.hf_generate_kwargs(N))

        variants["(peer) transformers generate"] = hf_gen
    t0 = time.perf_counter()
    variants["torch.compile(step, dynamic=True)"]()
    variants["math attention + inverse-CDF + compile"]()
    print(f"compile time (two variants): {time.perf_counter() - t0:.1f} s")
    meter = bc.CpuMeter()
    times = bc.rounds(variants, 11)
    share = meter.others_share()
    base = statistics.median(times["baseline"])
    print(f"\nother processes used {share:.0%} of the machine during the rounds")
    hf_med = statistics.median(times["(peer) transformers generate"]) if hf is not None else None
    print("| variant | median ms/call | best | new tok/s (median) | speed-up vs baseline | vs transformers |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in times.items():
        med = statistics.median(v)
        vs_hf = f"{hf_med / med:.2f}x" if hf_med else "-"
        print(f"| {k} | {med * 1000:.1f} | {min(v) * 1000:.1f} | {B * N / med:,.0f} | {base / med:.2f}x | {vs_hf} |")


if __name__ == "__main__":
    main()
