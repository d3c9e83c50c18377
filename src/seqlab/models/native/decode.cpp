// seqlab's native decode step: one Transformer.step (one new token per row, KV cache)
// as a single call into C++.
//
// Why by hand: a small model's decode step is ~90 tiny ATen ops, and on a CPU the
// Python side of each op (argument parsing, tensor wrappers) costs as much as its
// kernel. Calling the same ATen ops (matmuls, GELU, SiLU) from C++ removes that. Three
// loops are written by hand, each because the ATen op measured slow at this size: the
// norms, RoPE plus the cache write (in place of ~8 ops), and attention over the cache
// for one query per row (see attend below). sample_rows, at the end, is the sampler's
// draw for rules that truncate nothing, and decode_loop runs the sampler's whole loop
// (draw, step, repeat) for those rules.
// benchmarks/results.md has the measurements. The Python step in transformer.py and
// _draw in sampling.py are the references; tests/test_native_decode.py checks this file
// against them.
//
// Built on first use by seqlab/models/native.py (torch.utils.cpp_extension) and
// registered as torch.ops.seqlab.decode_step, .sample_rows and .decode_loop. CPU, float32
// activations (weights float32, bf16 copies, or 8-/4-bit from `seqlab quantize`), eval only.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "vec.h"

// the packed kernel's builds (packed_mm): AVX-512, or AVX2 with FMA
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define SEQLAB_PACKED 1
#include <immintrin.h>
#endif

using namespace seqlab_vec;

using at::Tensor;

namespace {

bool has(const Tensor& t) { return t.defined() && t.numel() > 0; }

// x W^T for a quantized W (models/quant.py says why these kernels): int8 rows (kChar) with
// bf16 scales aux (N,), or the int4 kernel's packed layout (kByte) with bf16 scales and
// zeros aux (K/g, N, 2). The kernels take bf16 activations; the result returns to float32.
// The int4 op is looked up by name: it is not in every torch's C++ API.
// A bf16 W (sampling under bf16 autocast, native.bf16_weights) multiplies bf16 activations
// in oneDNN's bf16 matmul, float32 accumulation.
Tensor quantized_mm(const Tensor& x, const Tensor& w, const Tensor& aux) {
  Tensor xb = x.to(at::kBFloat16).contiguous();
  if (w.scalar_type() == at::kBFloat16) return at::mm(xb, w.t()).to(at::kFloat);
  if (w.scalar_type() == at::kChar) return at::_weight_int8pack_mm(xb, w, aux).to(at::kFloat);
  static auto int4 = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("aten::_weight_int4pack_mm_for_cpu", "")
                         .typed<Tensor(const Tensor&, const Tensor&, int64_t, const Tensor&)>();
  return int4.call(xb, w, x.size(1) / aux.size(0), aux).to(at::kFloat);
}

// Small-batch products from a packed float32 weight (x W^T for at most kPackedMaxRows rows,
// the decode step's shape). Why by hand: at 1-16 rows a product reads every weight once
// and does a few multiply-adds with it, so it should run at memory speed, but MKL's GEMM
// at M = 8 measured 2.6x slower than memory speed on SmolLM2's matrices (benchmarks/
// results.md); its small-M path is instruction-bound. This kernel reads W from a copy
// packed in column blocks, (ceil(N / 16), K, 16): block j holds output columns 16j..16j+15,
// k-major, so one 64-byte load gives one k for 16 outputs, each row of x is broadcast one
// k at a time, and every accumulator is a whole vector of outputs: no horizontal sums, and
// the weights stream from memory in one sequential pass. native.py makes the packed copy
// (packed_weight) and keeps it while the weight is unchanged. AVX-512 or AVX2 with FMA
// (kPackedWidth 0 elsewhere, or in the generic build: native.py then packs nothing and
// linear() uses at::mm).
constexpr int64_t kPackedMaxRows = 16;
// weights this large stream from memory at every step (decode_loop's blocks)
constexpr int64_t kSharedWeightBytes = 16 << 20;

#ifdef SEQLAB_PACKED
// The vector type: AVX-512 (16 floats, 32 registers) or AVX2 (8 floats, 16 registers), a
// block of 16 columns being 1 or 2 vectors. Intrinsics, not vec.h's vector extensions:
// GCC kept arrays of vector-extension accumulators on the stack here.
#if defined(__AVX512F__)
struct Simd {
  using V = __m512;
  static constexpr int kLanes = 16, kRowChunk = 8;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V splat(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
};
// blocks a pass for m rows: accumulators m x NB x (16 / lanes) plus the NB weight vectors
// and x within the 32 registers
template <int M>
constexpr int kBlocksAPass = M <= 4 ? 4 : 3;
#else
struct Simd {
  using V = __m256;
  static constexpr int kLanes = 8, kRowChunk = 4;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V splat(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
};
template <int M>
constexpr int kBlocksAPass = M == 1 ? 3 : M == 2 ? 2 : 1;  // within 16 registers
#endif
constexpr int64_t kPackedWidth = 16;
constexpr int kPer = 16 / Simd::kLanes;  // vectors per 16-column block

// rows [0, M) of y, columns of blocks [j, j + NB): y = x W^T (+ bias) (+ resid)
template <int M, int NB>
inline void packed_blocks(const float* x, int64_t K, const float* p, const float* bias, const float* resid,
                          float* y, int64_t N, int64_t j) {
  using V = Simd::V;
  V acc[M][NB * kPer];
  for (int m = 0; m < M; ++m)
    for (int b = 0; b < NB * kPer; ++b) acc[m][b] = Simd::zero();
  const float* pb = p + j * K * 16;
  for (int64_t k = 0; k < K; ++k) {
    V w[NB * kPer];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      for (int h = 0; h < kPer; ++h) w[b * kPer + h] = Simd::load(pb + (b * K + k) * 16 + h * Simd::kLanes);
      // 8 cache lines ahead in each block's stream: the hardware prefetcher follows one
      // stream well, several interleaved ones less so (measured: ~10% at NB = 3)
      _mm_prefetch(reinterpret_cast<const char*>(pb + (b * K + k) * 16 + 128), _MM_HINT_T0);
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const V xv = Simd::splat(x[m * K + k]);
#pragma GCC unroll 8
      for (int b = 0; b < NB * kPer; ++b) acc[m][b] = Simd::fma(w[b], xv, acc[m][b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const int64_t n = (j + b) * 16;
    for (int m = 0; m < M; ++m) {
      if (n + 16 <= N) {
        for (int h = 0; h < kPer; ++h) {
          const int64_t c = n + h * Simd::kLanes;
          V v = acc[m][b * kPer + h];
          if (bias != nullptr) v = Simd::add(v, Simd::load(bias + c));
          if (resid != nullptr) v = Simd::add(v, Simd::load(resid + m * N + c));
          Simd::store(y + m * N + c, v);
        }
      } else {  // the last block's padding columns: through a buffer
        float buf[16];
        for (int h = 0; h < kPer; ++h) Simd::store(buf + h * Simd::kLanes, acc[m][b * kPer + h]);
        for (int64_t c = n; c < N; ++c)
          y[m * N + c] = buf[c - n] + (bias != nullptr ? bias[c] : 0.f) + (resid != nullptr ? resid[m * N + c] : 0.f);
      }
    }
  }
}

// blocks [j0, j1) for rows [0, M), M <= Simd::kRowChunk
template <int M>
void packed_rows(const float* x, int64_t K, const float* p, const float* bias, const float* resid, float* y,
                 int64_t N, int64_t j0, int64_t j1) {
  constexpr int NB = kBlocksAPass<M>;
  int64_t j = j0;
  for (; j + NB <= j1; j += NB) packed_blocks<M, NB>(x, K, p, bias, resid, y, N, j);
  for (; j < j1; ++j) packed_blocks<M, 1>(x, K, p, bias, resid, y, N, j);
}

using PackedRows = void (*)(const float*, int64_t, const float*, const float*, const float*, float*, int64_t,
                            int64_t, int64_t);
#if defined(__AVX512F__)
constexpr PackedRows kPackedRows[8] = {packed_rows<1>, packed_rows<2>, packed_rows<3>, packed_rows<4>,
                                       packed_rows<5>, packed_rows<6>, packed_rows<7>, packed_rows<8>};
#else
constexpr PackedRows kPackedRows[4] = {packed_rows<1>, packed_rows<2>, packed_rows<3>, packed_rows<4>};
#endif
#else
constexpr int64_t kPackedWidth = 0;
#endif

// x (M, K) W^T (+ b) (+ resid) for M <= kPackedMaxRows, W given as its packed copy
// (ceil(N / 16), K, 16) and its row count N
Tensor packed_mm(const Tensor& x_in, const Tensor& packed, int64_t N, const Tensor& b = Tensor(),
                 const Tensor* resid = nullptr) {
  TORCH_CHECK(kPackedWidth > 0, "packed_mm: this build has no packed kernel (AVX-512 or AVX2 only)");
  const Tensor x = x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(M <= kPackedMaxRows && packed.dim() == 3 && packed.size(1) == K && packed.size(2) == 16 &&
                  packed.size(0) == (N + 15) / 16 && packed.is_contiguous() && x.scalar_type() == at::kFloat &&
                  K > 0 && (!has(b) || (b.numel() == N && b.scalar_type() == at::kFloat)) &&
                  (resid == nullptr || (resid->size(0) == M && resid->size(1) == N)),
              "packed_mm: shapes do not match");
  Tensor y = at::empty({M, N}, x.options());
#ifdef SEQLAB_PACKED
  Tensor r = resid != nullptr ? resid->contiguous() : Tensor();
  const float* xp = x.data_ptr<float>();
  const float* pp = packed.data_ptr<float>();
  Tensor bc = has(b) ? b.contiguous() : Tensor();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  const float* rp = r.defined() ? r.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t blocks = packed.size(0);
  // A thread's share is at least ~256 KB of weights (~20 us of streaming, well above the
  // cost of waking it: a small model's products stay on one thread). Within it, a row
  // chunk (8 rows, AVX2 4) at a time over groups of 12 blocks (a multiple of every
  // kBlocksAPass; 0.4-1.2 MB at K = 576-1536, for L2): the next chunk finds the group in
  // cache, so W is read from memory once.
  const int64_t grain = std::max<int64_t>(1, (256 << 10) / (K * 64));
  const int64_t group = 12;
  at::parallel_for(0, blocks, grain, [&](int64_t j0, int64_t j1) {
    for (int64_t g = j0; g < j1; g += group) {
      const int64_t g1 = std::min(j1, g + group);
      for (int64_t m0 = 0; m0 < M; m0 += Simd::kRowChunk) {
        const int64_t rows = std::min<int64_t>(Simd::kRowChunk, M - m0);
        kPackedRows[rows - 1](xp + m0 * K, K, pp, bp, rp != nullptr ? rp + m0 * N : nullptr, yp + m0 * N, N, g, g1);
      }
    }
  });
#endif
  return y;
}

// Linear layer y = x W^T (+ b) (+ resid) (+ (x A^T) Bs^T), the residual folded into addmm.
// A (r, in) and Bs (out, r) are a LoRA adapter with its scale alpha / r folded into Bs
// (empty tensors: none); the adapter stays a separate low-rank product, as in peft. A
// quantized W comes with its scales in `aux` (see quantized_mm); a float32 W may come with
// its packed copy in `aux` (see packed_mm), used for up to kPackedMaxRows rows.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor* resid = nullptr,
              const Tensor& lora_a = Tensor(), const Tensor& lora_bs = Tensor(), const Tensor& aux = Tensor()) {
  Tensor y;
  if (w.scalar_type() != at::kFloat) {
    y = quantized_mm(x, w, aux);
    if (resid != nullptr) y.add_(*resid);
    if (has(b)) y.add_(b);
  } else if (has(aux) && x.size(0) <= kPackedMaxRows) {
    y = packed_mm(x, aux, w.size(0), b, resid);
  } else if (resid != nullptr) {
    y = at::addmm(*resid, x, w.t());
    if (has(b)) y.add_(b);
  } else if (has(b)) {
    y = at::addmm(b, x, w.t());
  } else {
    y = at::mm(x, w.t());
  }
  if (has(lora_a)) y.addmm_(at::mm(x, lora_a.t()), lora_bs.t());
  return y;
}

// LayerNorm (kind 0) or RMSNorm (kind 1) over the last dimension of a (B, C) tensor, as
// one loop: at::layer_norm allocates and fills per-row mean and rstd outputs for backward
// and costs ~5 us per call at (64, 64), ten times the arithmetic.
Tensor norm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t kind, double eps) {
  const int64_t B = x.size(0), C = x.size(1);
  Tensor xc = x.contiguous();
  Tensor y = at::empty_like(xc);
  const float* xp = xc.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  Tensor bc = has(b) ? b.contiguous() : Tensor();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < B; ++r) {
    const float* xr = xp + r * C;
    float* yr = yp + r * C;
    // sums in 8 independent lanes (vectorisable; one chain of adds is ~4 cycles an element)
    float lane[8] = {}, mean = 0.f, var = 0.f;  // var: for RMSNorm, the mean square
    if (kind == 0) {
      int64_t c = 0;
      for (; c + 8 <= C; c += 8)
        for (int l = 0; l < 8; ++l) lane[l] += xr[c + l];
      for (; c < C; ++c) lane[0] += xr[c];
      for (int l = 0; l < 8; ++l) mean += lane[l];
      mean /= C;
    }
    std::fill_n(lane, 8, 0.f);
    int64_t c = 0;
    for (; c + 8 <= C; c += 8)
      for (int l = 0; l < 8; ++l) lane[l] += (xr[c + l] - mean) * (xr[c + l] - mean);
    for (; c < C; ++c) lane[0] += (xr[c] - mean) * (xr[c] - mean);
    for (int l = 0; l < 8; ++l) var += lane[l];
    const float rstd = 1.0f / std::sqrt(var / C + static_cast<float>(eps));
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mean) * rstd * wp[c] + (bp ? bp[c] : 0.f);
  }
  return y;
}

// Normalise (QK-norm, when its weights are given) and rotate q and k heads in place
// (half-split RoPE: pairs (x[i], x[i + D/2])) and write the new keys and values into the
// cache at `pos`.
// qkv: (B, (H + 2 Hkv) * D) contiguous; cos/sin: (D/2) shared or (B, D/2) per row.
void rope_and_store(Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& kc, Tensor& vc,
                    int64_t H, int64_t Hkv, int64_t D, int64_t pos, const Tensor& q_norm, const Tensor& k_norm,
                    float eps) {
  const int64_t B = qkv.size(0), T = kc.size(2), half = D / 2;
  const int64_t row = (H + 2 * Hkv) * D;
  float* base = qkv.data_ptr<float>();
  float* kp = kc.data_ptr<float>();
  float* vp = vc.data_ptr<float>();
  const bool rope = cos.defined();
  const float* cp = rope ? cos.data_ptr<float>() : nullptr;
  const float* sp = rope ? sin.data_ptr<float>() : nullptr;
  const bool per_row = rope && cos.dim() == 2;
  const float* qn = has(q_norm) ? q_norm.data_ptr<float>() : nullptr;
  const float* kn = has(k_norm) ? k_norm.data_ptr<float>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    float* r = base + b * row;
    if (qn != nullptr) {  // QK-norm (Qwen3): RMSNorm over each q and k head, before RoPE
      for (int64_t h = 0; h < H + Hkv; ++h) {
        float* x = r + h * D;
        const float* w = h < H ? qn : kn;
        float ss = 0.f;
        for (int64_t i = 0; i < D; ++i) ss += x[i] * x[i];
        const float rstd = 1.0f / std::sqrt(ss / D + eps);
        for (int64_t i = 0; i < D; ++i) x[i] = x[i] * rstd * w[i];
      }
    }
    if (rope) {
      const float* c = cp + (per_row ? b * half : 0);
      const float* s = sp + (per_row ? b * half : 0);
      for (int64_t h = 0; h < H + Hkv; ++h) {
        float* x = r + h * D;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          x[i] = x1 * c[i] - x2 * s[i];
          x[i + half] = x1 * s[i] + x2 * c[i];
        }
      }
    }
    for (int64_t g = 0; g < Hkv; ++g) {
      std::copy_n(r + (H + g) * D, D, kp + ((b * Hkv + g) * T + pos) * D);
      std::copy_n(r + (H + Hkv + g) * D, D, vp + ((b * Hkv + g) * T + pos) * D);
    }
  }
}

// softmax(q k^T / sqrt(D)) v over the first t cache positions, one query per (row, head).
// Query head h reads key/value head h / (H / Hkv) (grouped-query attention).
// key_mask (B, mask_len) bool, or undefined: False positions get no weight.
//
// Two implementations. attend_bmm: batched matmuls over (row, key/value head), the G
// query heads sharing a key/value head being the rows of one matmul. attend_vec, for
// head sizes that are a multiple of a vector width: hand-vectorised loops (GCC/Clang
// vector extensions; one AVX-512 register holds 16 floats) for q.k, the softmax and p.v,
// in one parallel region. At batch 64 MKL's batched GEMM pays a large fixed cost per 1 x D
// times D x t product, and a plain scalar loop is slower still (each dot product is a
// chain of dependent adds); the vector loops are what make this step fast.

Tensor attend_bmm(const Tensor& qkv, const Tensor& kc, const Tensor& vc, const Tensor& key_mask,
                  int64_t H, int64_t Hkv, int64_t D, int64_t t) {
  const int64_t B = qkv.size(0), T = kc.size(2), G = H / Hkv;
  Tensor q = qkv.narrow(1, 0, H * D).reshape({B * Hkv, G, D});
  Tensor keys_t = kc.view({B * Hkv, T, D}).narrow(1, 0, t).transpose(1, 2);  // (B*Hkv, D, t)
  // beta = 0 ignores the input; the 1/sqrt(D) scale rides in alpha
  Tensor scores = at::baddbmm(at::zeros({}, qkv.options()), q, keys_t, 0.0, 1.0 / std::sqrt(static_cast<double>(D)));
  if (key_mask.defined())
    scores = scores.view({B, H, t})
                 .masked_fill(key_mask.narrow(1, 0, t).logical_not().unsqueeze(1), -INFINITY)
                 .view({B * Hkv, G, t});
  Tensor y = at::bmm(at::_softmax(scores, -1, false), vc.view({B * Hkv, T, D}).narrow(1, 0, t));
  return y.view({B, H * D});
}

template <int W>
Tensor attend_vec(const Tensor& qkv, const Tensor& kc, const Tensor& vc, const Tensor& key_mask,
                  int64_t H, int64_t Hkv, int64_t D, int64_t t) {
  using V = typename Vec<W>::type;
  const int64_t B = qkv.size(0), T = kc.size(2), G = H / Hkv, row = (H + 2 * Hkv) * D;
  const float* qp = qkv.data_ptr<float>();
  const float* kp = kc.data_ptr<float>();
  const float* vp = vc.data_ptr<float>();
  const bool* mp = key_mask.defined() ? key_mask.data_ptr<bool>() : nullptr;
  const int64_t mask_len = key_mask.defined() ? key_mask.size(1) : 0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t grain = std::max<int64_t>(1, kGrainFlops / (t * D));
  const int64_t padded = (t + W - 1) / W * W;
  Tensor y = at::empty({B, H * D}, qkv.options());
  float* yp = y.data_ptr<float>();
  // one parallel region: scores, softmax and the weighted sum of values per (row, head)
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(padded);
    float* s = buf.data();
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H;
      const float* q = qp + b * row + (bh % H) * D;
      const float* k = kp + (b * Hkv + (bh % H) / G) * T * D;
      const float* v = vp + (b * Hkv + (bh % H) / G) * T * D;
      const bool* m = mp ? mp + b * mask_len : nullptr;
      float mx = -INFINITY;
      for (int64_t j = 0; j < t; ++j) {
        V acc = load<W>(q) * load<W>(k + j * D);
        for (int64_t d = W; d < D; d += W) acc += load<W>(q + d) * load<W>(k + j * D + d);
        s[j] = (m && !m[j]) ? -INFINITY : hsum<W>(acc) * scale;
        mx = std::max(mx, s[j]);
      }
      std::fill(s + t, s + padded, -INFINITY);
      weighted_row_sum<W>(s, t, v, D, D, 1.0f / exp_sum<W>(s, padded, mx), yp + bh * D);  // y is (B, H, D)
    }
  });
  return y;
}

Tensor attend(const Tensor& qkv, const Tensor& kc, const Tensor& vc, const Tensor& key_mask,
              int64_t H, int64_t Hkv, int64_t D, int64_t t) {
  if (D % 16 == 0) return attend_vec<16>(qkv, kc, vc, key_mask, H, Hkv, D, t);
  if (D % 8 == 0) return attend_vec<8>(qkv, kc, vc, key_mask, H, Hkv, D, t);
  return attend_bmm(qkv, kc, vc, key_mask, H, Hkv, D, t);
}

// layers: 26 tensors per layer, in order
//   norm1.weight, norm1.bias, qkv.weight, qkv.bias, proj.weight, proj.bias,
//   norm2.weight, norm2.bias, fc (or gate_up).weight, its bias, mlp proj.weight, its bias,
//   q_norm.weight, k_norm.weight,
//   LoRA A and scaled B of qkv, attention proj, fc (or gate_up), mlp proj,
//   the quantization aux (scales) of qkv, attention proj, fc (or gate_up), mlp proj
// (an absent bias, QK-norm, adapter or aux is an empty tensor); final: norm_f.weight,
// norm_f.bias, lm_head.weight, its aux. row_pos (B,) per-row positions for left-padded prompts, else position =
// pos. head_dim may differ from C / n_head (Qwen3's wide heads). mlp_kind 0: GELU (exact),
// 1: SwiGLU, 2: GELU (tanh approximation, GPT-2). norm_kind 0: LayerNorm, 1: RMSNorm;
// eps serves every norm, QK-norm included. window > 0: the cache is a ring of `window` slots
// (sliding-window attention): position pos is written to slot pos % window, attention reads
// the slots written so far, and a left-padded prompt's key_mask is set True at the new slot.
Tensor decode_step(const Tensor& tokens, const std::optional<Tensor>& row_pos, int64_t pos,
                   const Tensor& wte, const std::optional<Tensor>& wpe,
                   const std::optional<Tensor>& rope_cos, const std::optional<Tensor>& rope_sin,
                   at::TensorList layers, at::TensorList final_weights, at::TensorList k_cache,
                   at::TensorList v_cache, const std::optional<Tensor>& key_mask, int64_t n_head,
                   int64_t n_kv_head, int64_t head_dim, int64_t norm_kind, double eps, int64_t mlp_kind,
                   int64_t window) {
  TORCH_CHECK(layers.size() == 26 * k_cache.size(), "decode_step: 26 weights per layer expected");
  const int64_t slot = window > 0 ? pos % window : pos, keys = window > 0 ? std::min(pos + 1, window) : pos + 1;
  const int64_t D = head_dim, L = static_cast<int64_t>(k_cache.size());
  const bool per_row = row_pos.has_value();
  Tensor x = at::embedding(wte, tokens);  // (B, C), a fresh tensor
  Tensor cos, sin;
  if (wpe.has_value()) {
    x.add_(per_row ? at::index_select(*wpe, 0, *row_pos) : wpe->select(0, pos));
  } else {
    cos = per_row ? at::index_select(*rope_cos, 0, *row_pos) : rope_cos->select(0, pos);
    sin = per_row ? at::index_select(*rope_sin, 0, *row_pos) : rope_sin->select(0, pos);
  }
  Tensor mask = key_mask.has_value() ? key_mask->contiguous() : Tensor();
  if (window > 0 && mask.defined()) {
    TORCH_CHECK(mask.is_same(*key_mask), "decode_step: a ring cache's key_mask must be contiguous");
    mask.select(1, slot).fill_(true);  // the slot's old key may have been padding
  }
  for (int64_t l = 0; l < L; ++l) {
    const Tensor* w = &layers[26 * l];
    Tensor kc = k_cache[l], vc = v_cache[l];
    TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous() && kc.scalar_type() == at::kFloat,
                "decode_step: the KV cache must be contiguous float32 (B, Hkv, T, D)");
    Tensor qkv = linear(norm(x, w[0], w[1], norm_kind, eps), w[2], w[3], nullptr, w[14], w[15], w[22]).contiguous();
    rope_and_store(qkv, cos, sin, kc, vc, n_head, n_kv_head, D, slot, w[12], w[13], static_cast<float>(eps));
    Tensor y = attend(qkv, kc, vc, mask, n_head, n_kv_head, D, keys);
    x = linear(y, w[4], w[5], &x, w[16], w[17], w[23]);
    Tensor h = norm(x, w[6], w[7], norm_kind, eps);
    Tensor a;
    if (mlp_kind == 1) {
      Tensor gu = linear(h, w[8], w[9], nullptr, w[18], w[19], w[24]);
      const int64_t hidden = gu.size(1) / 2;
      a = at::silu(gu.narrow(1, 0, hidden)).mul_(gu.narrow(1, hidden, hidden));
    } else {
      a = at::gelu(linear(h, w[8], w[9], nullptr, w[18], w[19], w[24]), mlp_kind == 2 ? "tanh" : "none");
    }
    x = linear(a, w[10], w[11], &x, w[20], w[21], w[25]);
  }
  return linear(norm(x, final_weights[0], final_weights[1], norm_kind, eps), final_weights[2], Tensor(), nullptr,
                Tensor(), Tensor(), final_weights[3]);
}

// One token per row from softmax(logits / temperature), by inverse CDF with the row's
// uniform u in (0, 1]: the first token whose cumulative probability reaches u * total, the
// rule of sampling.py's _draw (which documents why u must not be 0). Writes each row's
// token and its log-probs under the model (temperature 1) and under the distribution
// drawn from to tok/model_lp/sample_lp[b * out_stride]. For rules that truncate nothing;
// sampling.py handles the rest.
void draw_rows(const Tensor& logits, const float* up, double temperature, int64_t* tp, float* mp, float* sp,
               int64_t out_stride) {
  constexpr int W = 16;
  using V = Vec<W>::type;
  const Tensor x = logits.contiguous();
  const int64_t B = x.size(0), Vn = x.size(1), padded = (Vn + W - 1) / W * W;
  const float* xp = x.data_ptr<float>();
  const float inv_t = static_cast<float>(1.0 / temperature);
  std::vector<float> e(padded);
  // log(sum(exp(row * scale - max))) + max, with the exps left in e
  auto logsumexp = [&](const float* row, float scale) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < Vn; ++i) mx = std::max(mx, row[i] * scale);
    for (int64_t i = 0; i < Vn; ++i) e[i] = row[i] * scale - mx;
    std::fill(e.begin() + Vn, e.end(), -INFINITY);
    return std::log(exp_sum<W>(e.data(), padded, 0.f)) + mx;
  };
  for (int64_t b = 0; b < B; ++b) {
    const float* row = xp + b * Vn;
    const float lse_model = logsumexp(row, 1.0f);
    const float lse = inv_t == 1.0f ? lse_model : logsumexp(row, inv_t);
    // e holds exp(row * inv_t - max): the drawn distribution up to a constant factor,
    // which scaling the target by the total cancels
    float total = 0.f;
    for (int64_t i = 0; i < Vn; ++i) total += e[i];
    const float target = up[b] * total;
    int64_t tok = Vn - 1;  // reached only by rounding: the last token has mass (u <= 1)
    float cdf = 0.f;
    for (int64_t i = 0; i < Vn; ++i) {
      cdf += e[i];
      if (cdf >= target && e[i] > 0.f) {  // never a zero-mass token, even for a target of 0
        tok = i;
        break;
      }
    }
    tp[b * out_stride] = tok;
    mp[b * out_stride] = row[tok] - lse_model;
    sp[b * out_stride] = row[tok] * inv_t - lse;
  }
}

// The tokens (B, 1) and both log-probs (B, 1) for one step; `uniform` (B, 1).
std::tuple<Tensor, Tensor, Tensor> sample_rows(const Tensor& logits, const Tensor& uniform, double temperature) {
  const int64_t B = logits.size(0);
  Tensor tokens = at::empty({B, 1}, logits.options().dtype(at::kLong));
  Tensor model_lp = at::empty({B, 1}, logits.options()), sample_lp = at::empty({B, 1}, logits.options());
  const Tensor u = uniform.contiguous();
  draw_rows(logits, u.data_ptr<float>(), temperature, tokens.data_ptr<int64_t>(), model_lp.data_ptr<float>(),
            sample_lp.data_ptr<float>(), 1);
  return {tokens, model_lp, sample_lp};
}

// sampling.generate's loop for rules that truncate nothing, on the native step: draw a
// token per row from `logits` with uniforms[t] (steps, B, 1), step the model on it, repeat,
// for up to `steps` tokens, or until every row has produced eos_id (eos_id < 0: never).
// Returns tokens, model and sampling log-probs, (B, n) each for the n <= steps tokens
// drawn; the cache advances n - 1 positions from `pos`. A row's columns after its eos are
// eos and log-prob 0 (generate masks them like any token after a row's eos). eos_check is
// the Python loop's interval for the all-finished check; this loop checks every step.
// Without this loop the Python around each step (a draw call, a step call, list
// appends) cost 8-13% of a generation (benchmarks/results.md).
//
// Rows never interact, so the batch is split into one block of rows per thread, and each
// thread runs the whole loop for its block with single-threaded ops: no fork and join per
// op (a decode step is ~40 small ops; at batch 64 each waited on the slower thread).
// A row that draws eos leaves its block's batch: the block's last live row moves into its
// slot (its KV cache rows, key mask and position offset with it), so later steps compute
// only live rows. On a model whose step is compute-bound at these batches (SmolLM2 at 32
// rows a thread) a GRPO rollout whose rows end at different lengths then costs the sum of
// their lengths, not rows x the longest. The cache's rows are left permuted: generate
// drops the cache after the loop.
std::tuple<Tensor, Tensor, Tensor> decode_loop(
    const Tensor& first_logits, const Tensor& uniforms, double temperature, int64_t eos_id, int64_t eos_check,
    const std::optional<Tensor>& offset, int64_t pos, const Tensor& wte, const std::optional<Tensor>& wpe,
    const std::optional<Tensor>& rope_cos, const std::optional<Tensor>& rope_sin, at::TensorList layers,
    at::TensorList final_weights, at::TensorList k_cache, at::TensorList v_cache,
    const std::optional<Tensor>& key_mask, int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t norm_kind,
    double eps, int64_t mlp_kind, int64_t window) {
  (void)eos_check;
  const int64_t steps = uniforms.size(0), B = first_logits.size(0);
  TORCH_CHECK(uniforms.size(1) == B, "decode_loop: one uniform per row and step expected");
  Tensor tokens = at::empty({B, steps}, first_logits.options().dtype(at::kLong));
  Tensor model_lp = at::empty({B, steps}, first_logits.options());
  Tensor sample_lp = at::empty({B, steps}, first_logits.options());
  int64_t* tp = tokens.data_ptr<int64_t>();
  float* mp = model_lp.data_ptr<float>();
  float* sp = sample_lp.data_ptr<float>();
  const Tensor u = uniforms.contiguous();
  const float* up = u.data_ptr<float>();
  // rows [b0, b1) from `pos` on; returns the number of tokens drawn for them
  auto run_rows = [&](int64_t b0, int64_t b1) -> int64_t {
    const int64_t nb = b1 - b0;
    std::vector<Tensor> kc, vc;
    for (size_t l = 0; l < k_cache.size(); ++l) {
      kc.push_back(k_cache[l].narrow(0, b0, nb));
      vc.push_back(v_cache[l].narrow(0, b0, nb));
    }
    // the block's own copies: their rows move with the live rows
    Tensor mask = key_mask.has_value() ? key_mask->narrow(0, b0, nb).contiguous().clone() : Tensor();
    Tensor off = offset.has_value() ? offset->narrow(0, b0, nb).contiguous().clone() : Tensor();
    std::vector<int64_t> row(nb);  // slot -> row of the block
    for (int64_t i = 0; i < nb; ++i) row[i] = i;
    std::vector<int64_t> tb(nb);
    std::vector<float> ub(nb), mb(nb), sb(nb);
    int64_t live = nb;
    Tensor logits = first_logits.narrow(0, b0, nb);
    int64_t n = 0, p = pos;
    while (n < steps) {
      for (int64_t i = 0; i < live; ++i) ub[i] = up[n * B + b0 + row[i]];
      draw_rows(logits, ub.data(), temperature, tb.data(), mb.data(), sb.data(), 1);
      for (int64_t i = 0; i < live; ++i) {
        const int64_t at = (b0 + row[i]) * steps + n;
        tp[at] = tb[i];
        mp[at] = mb[i];
        sp[at] = sb[i];
      }
      ++n;
      if (n == steps) break;
      for (int64_t i = 0; eos_id >= 0 && i < live;) {
        if (tb[i] != eos_id) {
          ++i;
          continue;
        }
        const int64_t r = b0 + row[i];
        for (int64_t t = n; t < steps; ++t) {
          tp[r * steps + t] = eos_id;
          mp[r * steps + t] = sp[r * steps + t] = 0.f;
        }
        const int64_t j = --live;  // the last live slot moves into slot i (then i is checked again)
        if (i != j) {
          row[i] = row[j];
          tb[i] = tb[j];
          // raw copies: the cache is an inference tensor, and this may run on a worker thread
          for (size_t l = 0; l < kc.size(); ++l) {
            const int64_t per_row = kc[l].stride(0);
            float* k = kc[l].data_ptr<float>();
            float* v = vc[l].data_ptr<float>();
            std::copy_n(k + j * per_row, per_row, k + i * per_row);
            std::copy_n(v + j * per_row, per_row, v + i * per_row);
          }
          if (mask.defined()) {
            bool* m = mask.data_ptr<bool>();
            std::copy_n(m + j * mask.size(1), mask.size(1), m + i * mask.size(1));
          }
          if (off.defined()) {
            const int64_t w = off.numel() / nb;  // (nb,) or (nb, 1)
            std::copy_n(static_cast<char*>(off.data_ptr()) + j * w * off.element_size(), w * off.element_size(),
                        static_cast<char*>(off.data_ptr()) + i * w * off.element_size());
          }
        }
      }
      if (live == 0) break;
      std::vector<Tensor> kl, vl;
      for (size_t l = 0; l < kc.size(); ++l) {
        kl.push_back(kc[l].narrow(0, 0, live));
        vl.push_back(vc[l].narrow(0, 0, live));
      }
      const Tensor last = at::from_blob(tb.data(), {live}, tokens.options()).clone();
      const std::optional<Tensor> live_mask =
          mask.defined() ? std::optional<Tensor>(mask.narrow(0, 0, live)) : std::nullopt;
      const std::optional<Tensor> row_pos =
          off.defined() ? std::optional<Tensor>(at::sub(at::scalar_tensor(p, off.options()), off.narrow(0, 0, live)))
                        : std::nullopt;
      logits = decode_step(last, row_pos, p, wte, wpe, rope_cos, rope_sin, layers, final_weights, kl, vl, live_mask,
                           n_head, n_kv_head, head_dim, norm_kind, eps, mlp_kind, window);
      ++p;
    }
    return n;
  };
  // Except when each block's rows would each read all the weights from memory: with the
  // packed kernel (up to kPackedMaxRows rows a block) a step streams the weights once per
  // block, so weights beyond the caches (kSharedWeightBytes) are better streamed once, the
  // threads splitting each product between them.
  int64_t weight_bytes = final_weights[2].nbytes();
  for (size_t i = 0; i < layers.size(); i += 26)
    for (int j : {2, 4, 8, 10}) weight_bytes += layers[i + j].nbytes();
  const bool packed = has(final_weights[3]) && final_weights[3].scalar_type() == at::kFloat;
  const int64_t blocks = B >= 4 && !(packed && weight_bytes > kSharedWeightBytes && B <= kPackedMaxRows)
                             ? std::min<int64_t>(at::get_num_threads(), B / 2)
                             : 1;
  std::vector<int64_t> drawn(blocks, 0);
  if (blocks == 1) {
    drawn[0] = run_rows(0, B);
  } else {
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) drawn[c] = run_rows(B * c / blocks, B * (c + 1) / blocks);
    });
  }
  // a block that stopped early did so because its rows had all ended: their columns up to
  // `steps` are eos and 0 already
  const int64_t n = *std::max_element(drawn.begin(), drawn.end());
  return {tokens.narrow(1, 0, n), model_lp.narrow(1, 0, n), sample_lp.narrow(1, 0, n)};
}

}  // namespace

TORCH_LIBRARY(seqlab, m) {
  m.def(
      "decode_step(Tensor tokens, Tensor? row_pos, int pos, Tensor wte, Tensor? wpe, Tensor? rope_cos, "
      "Tensor? rope_sin, Tensor[] layers, Tensor[] final_weights, Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, "
      "Tensor? key_mask, int n_head, int n_kv_head, int head_dim, int norm_kind, float eps, int mlp_kind, "
      "int window=0) -> Tensor");
  m.def("packed_mm(Tensor x, Tensor packed, int n, Tensor? bias=None) -> Tensor");
  m.def("packed_width() -> int", [] { return kPackedWidth; });
  m.def("sample_rows(Tensor logits, Tensor uniform, float temperature) -> (Tensor, Tensor, Tensor)");
  m.def(
      "decode_loop(Tensor logits, Tensor uniforms, float temperature, int eos_id, int eos_check, Tensor? offset, "
      "int pos, Tensor wte, Tensor? wpe, Tensor? rope_cos, Tensor? rope_sin, Tensor[] layers, "
      "Tensor[] final_weights, Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, Tensor? key_mask, int n_head, "
      "int n_kv_head, int head_dim, int norm_kind, float eps, int mlp_kind, int window=0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(seqlab, CPU, m) {
  m.impl("decode_step", decode_step);
  m.impl("packed_mm", [](const Tensor& x, const Tensor& packed, int64_t n, const std::optional<Tensor>& bias) {
    return packed_mm(x, packed, n, bias.has_value() ? *bias : Tensor());
  });
  m.impl("sample_rows", sample_rows);
  m.impl("decode_loop", decode_loop);
}
