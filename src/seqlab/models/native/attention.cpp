// seqlab's native causal self-attention for training and full forwards: softmax(q k^T *
// scale + causal mask) v, forward and backward, for float32 CPU tensors with a head size
// that is a multiple of 8. transformer.py calls it through an autograd.Function
// (models/native.py) in place of scaled_dot_product_attention where it applies.
//
// Why by hand: small models have small heads (16 dims at 64 wide and 4 heads), and at
// such sizes PyTorch's CPU flash-attention kernel spends most of its time outside the
// arithmetic (blocking, small GEMM calls, bookkeeping per block); it was a third of a
// GRPO training step's forward + backward (benchmarks/results.md). Here each (row, head)
// keeps its keys and values transposed in a small buffer, so a score block of 16 keys is
// D broadcast multiply-adds, and everything else is one vector op per key.
//
// Forward (per query i, keys j <= i): s_ij = scale q_i.k_j; p_ij = exp(s_ij - lse_i),
// lse_i = log sum_j exp(s_ij); o_i = sum_j p_ij v_j. It returns o and lse; the backward
// recomputes p from lse (FlashAttention's scheme, no T x T tensor is stored):
//   dv_j = sum_i p_ij do_i,    dp_ij = do_i.v_j,    delta_i = do_i.o_i = sum_j p_ij dp_ij,
//   ds_ij = p_ij (dp_ij - delta_i),    dq_i = scale sum_j ds_ij k_j,    dk_j = scale sum_i ds_ij q_i.
// Grouped-query attention: query head h reads key/value head h / (H / Hkv); the backward
// runs per key/value head and sums its G query heads into dk and dv.
// Packed rows (several sequences per row, for training without padding): `starts` (B, T)
// gives, for each query i, the first key of its sequence; query i then sees keys
// starts[i]..i only (a block-diagonal causal mask), and the work per sequence is its own
// length squared, not the row's.
//
// tests/test_native_attention.py checks both directions against scaled_dot_product_attention.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "vec.h"

using at::Tensor;
using namespace seqlab_vec;

namespace {

constexpr int KW = 16;  // keys per score block (one AVX-512 register)
using VK = Vec<KW>::type;

// rows of a (B, H, T, D) tensor whose last dimension is contiguous
struct Rows {
  const float* p;
  int64_t sb, sh, st;
  explicit Rows(const Tensor& t) : p(t.data_ptr<float>()), sb(t.stride(0)), sh(t.stride(1)), st(t.stride(2)) {}
  const float* operator()(int64_t b, int64_t h, int64_t i) const { return p + b * sb + h * sh + i * st; }
};

Tensor unit_last_stride(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

void check(const Tensor& q, const Tensor& k, const Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "causal_attention: (B, H, T, D) tensors expected");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "causal_attention: float32 only");
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3),
              "causal_attention: q, k, v shapes differ");
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "causal_attention: query heads must be a multiple of key/value heads");
  TORCH_CHECK(q.size(3) % 8 == 0, "causal_attention: head size must be a multiple of 8");
}

// keys (or values) 0..T-1 of one head, transposed into dst (D, Tp), zero beyond T
void transpose_rows(const float* src, int64_t stride, int64_t T, int64_t D, int64_t Tp, float* dst) {
  for (int64_t j = 0; j < T; ++j)
    for (int64_t d = 0; d < D; ++d) dst[d * Tp + j] = src[j * stride + d];
  for (int64_t d = 0; d < D; ++d) std::fill(dst + d * Tp + T, dst + (d + 1) * Tp, 0.f);
}

// out[j..j+KW) = sum_d x[d] * t[d, j..j+KW) for the key blocks covering 0..n-1
inline void row_times_transposed(const float* x, const float* t, int64_t D, int64_t Tp, int64_t n, float scale,
                                 float* out) {
  for (int64_t j = 0; j < n; j += KW) {
    VK acc = {};
    for (int64_t d = 0; d < D; ++d) acc += x[d] * load<KW>(t + d * Tp + j);
    store<KW>(out + j, acc * scale);
  }
}

// each query's first visible key: starts[b, i] for packed rows, else 0
struct Starts {
  const int32_t* p;
  int64_t T;
  int64_t operator()(int64_t b, int64_t i) const { return p ? p[b * T + i] : 0; }
};

Starts starts_of(const c10::optional<Tensor>& starts, const Tensor& q) {
  if (!starts.has_value()) return {nullptr, q.size(2)};
  const Tensor& s = *starts;
  TORCH_CHECK(s.scalar_type() == at::kInt && s.dim() == 2 && s.size(0) == q.size(0) && s.size(1) == q.size(2) &&
                  s.is_contiguous(),
              "causal_attention: starts must be a contiguous (B, T) int32 tensor");
  return {s.data_ptr<int32_t>(), q.size(2)};
}

template <int W>
std::tuple<Tensor, Tensor> forward_impl(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, double scale_d,
                                        const Starts& start_of) {
  const Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), G = H / Hkv;
  const int64_t Tp = (T + KW - 1) / KW * KW;
  const float scale = static_cast<float>(scale_d);
  // o is laid out (B, T, H, D), so the caller's transpose + reshape to (B, T, H * D) is free
  Tensor o = at::empty({B, T, H, D}, q.options());
  Tensor lse = at::empty({B, H, T}, q.options());
  const Rows Q(q), K(k), Vv(v);
  float* op = o.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  // per (row, key/value head): its keys are transposed once for the G query heads that share them
  const int64_t grain = std::max<int64_t>(1, kGrainFlops / std::max<int64_t>(1, G * T * T * D));
  at::parallel_for(0, B * Hkv, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(D * Tp), s(Tp);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv;
      transpose_rows(K(b, g, 0), K.st, T, D, Tp, kt.data());
      const float* vrow = Vv(b, g, 0);
      for (int64_t h = g * G; h < (g + 1) * G; ++h) {
        for (int64_t i = 0; i < T; ++i) {
          // keys j0..i are visible; the score blocks cover jb..np (key blocks stay aligned)
          const int64_t n = i + 1, np = (n + KW - 1) / KW * KW, j0 = start_of(b, i), jb = j0 / KW * KW;
          row_times_transposed(Q(b, h, i), kt.data() + jb, D, Tp, n - jb, scale, s.data() + jb);
          std::fill(s.begin() + jb, s.begin() + j0, -INFINITY);
          std::fill(s.begin() + n, s.begin() + np, -INFINITY);
          VK mx = load<KW>(s.data() + jb);
          for (int64_t j = jb + KW; j < np; j += KW) {
            const VK x = load<KW>(s.data() + j);
            mx = x > mx ? x : mx;
          }
          const float m = hmax<KW>(mx);
          const float l = exp_sum<KW>(s.data() + jb, np - jb, m);
          weighted_row_sum<W>(s.data() + j0, n - j0, vrow + j0 * Vv.st, Vv.st, D, 1.0f / l,
                              op + ((b * T + i) * H + h) * D);
          lp[(b * H + h) * T + i] = m + std::log(l);
        }
      }
    }
  });
  return {o.transpose(1, 2), lse};
}

// dk_j += sum_{i >= j} ds[i, j] q_i and dv_j += sum_{i >= j} p[i, j] do_i for the NJ
// columns j0..j0+NJ-1 (rows of p and ds are Tp apart), accumulated in registers: one
// vector per column and output, so each q_i and do_i row is loaded once per NJ columns.
// Rows stop at i_end (exclusive): the end of the last column's sequence in packed rows.
template <int W, int NJ>
inline void key_value_grads(const float* p, const float* ds, int64_t Tp, const float* q, int64_t q_st,
                            const float* dout, int64_t do_st, int64_t j0, int64_t i_end, int64_t D, float* dk,
                            float* dv) {
  using V = typename Vec<W>::type;
  for (int64_t d = 0; d < D; d += W) {
    V ak[NJ] = {}, av[NJ] = {};
    for (int64_t i = j0; i < i_end; ++i) {
      // columns j > i of row i are 0: exp of a masked score (a row is written up to a
      // multiple of 16 columns, which covers j0 + NJ - 1 for NJ <= 4 and j0 a multiple of NJ)
      const V qv = load<W>(q + i * q_st + d), dov = load<W>(dout + i * do_st + d);
      const float* dsr = ds + i * Tp + j0;
      const float* pr = p + i * Tp + j0;
      for (int u = 0; u < NJ; ++u) {
        ak[u] += dsr[u] * qv;
        av[u] += pr[u] * dov;
      }
    }
    for (int u = 0; u < NJ; ++u) {
      float* dkj = dk + (j0 + u) * D + d;
      float* dvj = dv + (j0 + u) * D + d;
      store<W>(dkj, load<W>(dkj) + ak[u]);
      store<W>(dvj, load<W>(dvj) + av[u]);
    }
  }
}

template <int W>
std::tuple<Tensor, Tensor, Tensor> backward_impl(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in,
                                                 const Tensor& v_in, const Tensor& o_in, const Tensor& lse,
                                                 double scale_d, const Starts& start_of) {
  using V = typename Vec<W>::type;
  const Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const Tensor dout = unit_last_stride(dout_in), o = unit_last_stride(o_in);
  const Tensor lse_c = lse.contiguous();
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), G = H / Hkv;
  const int64_t Tp = (T + KW - 1) / KW * KW;
  const float scale = static_cast<float>(scale_d);
  // gradients laid out (B, T, heads, D) like the packed qkv projection they flow back into
  Tensor dq = at::empty({B, T, H, D}, q.options());
  Tensor dk = at::empty({B, T, Hkv, D}, q.options());
  Tensor dv = at::empty({B, T, Hkv, D}, q.options());
  const Rows Q(q), K(k), Vv(v), dO(dout), O(o);
  const float* lp = lse_c.data_ptr<float>();
  float* dqp = dq.data_ptr<float>();
  float* dkp = dk.data_ptr<float>();
  float* dvp = dv.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kGrainFlops / std::max<int64_t>(1, G * T * T * D));
  at::parallel_for(0, B * Hkv, grain, [&](int64_t begin, int64_t end) {
    // p and ds for one head, row i holding columns 0..i (rounded up to a key block)
    std::vector<float> kt(D * Tp), vt(D * Tp), p(T * Tp), ds(T * Tp), dk_acc(T * D), dv_acc(T * D);
    std::vector<int64_t> seq_end(T);  // one past the last query of key j's sequence
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / Hkv, g = bg % Hkv;
      for (int64_t j = T - 1, e = T; j >= 0; --j) {
        seq_end[j] = e;
        if (start_of(b, j) == j) e = j;
      }
      const float* krow = K(b, g, 0);
      transpose_rows(krow, K.st, T, D, Tp, kt.data());
      transpose_rows(Vv(b, g, 0), Vv.st, T, D, Tp, vt.data());
      std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
      for (int64_t h = g * G; h < (g + 1) * G; ++h) {
        // rows of p and ds, and dq_i = sum_j ds_ij k_j
        for (int64_t i = 0; i < T; ++i) {
          const int64_t n = i + 1, np = (n + KW - 1) / KW * KW, j0 = start_of(b, i), jb = j0 / KW * KW;
          const float* qi = Q(b, h, i);
          const float* doi = dO(b, h, i);
          const float* oi = O(b, h, i);
          float* pi = p.data() + i * Tp;
          float* dsi = ds.data() + i * Tp;
          V dacc = {};
          for (int64_t d = 0; d < D; d += W) dacc += load<W>(doi + d) * load<W>(oi + d);
          const float delta = hsum<W>(dacc), l = lp[(b * H + h) * T + i];
          // p and ds are 0 outside keys j0..i: the key-side loop below reads whole columns
          std::fill(pi, pi + jb, 0.f);
          std::fill(dsi, dsi + jb, 0.f);
          row_times_transposed(qi, kt.data() + jb, D, Tp, n - jb, scale, pi + jb);  // scores
          std::fill(pi + jb, pi + j0, -INFINITY);
          std::fill(pi + n, pi + np, -INFINITY);
          row_times_transposed(doi, vt.data() + jb, D, Tp, n - jb, 1.0f, dsi + jb);  // dp
          for (int64_t j = jb; j < np; j += KW) {
            const VK pj = exp_nonpos<KW>(load<KW>(pi + j) - l);  // 0 outside j0..i
            store<KW>(pi + j, pj);
            store<KW>(dsi + j, pj * (load<KW>(dsi + j) - delta) * scale);  // ds with the scale folded in
          }
          weighted_row_sum<W>(dsi + j0, n - j0, krow + j0 * K.st, K.st, D, 1.0f,
                              dqp + ((b * T + i) * H + h) * D);  // dq_i
        }
        // dk and dv, four key columns at a time
        const float* qh = Q(b, h, 0);
        const float* doh = dO(b, h, 0);
        int64_t j0 = 0;
        for (; j0 + 4 <= T; j0 += 4)
          key_value_grads<W, 4>(p.data(), ds.data(), Tp, qh, Q.st, doh, dO.st, j0, seq_end[j0 + 3], D,
                                dk_acc.data(), dv_acc.data());
        for (; j0 < T; ++j0)
          key_value_grads<W, 1>(p.data(), ds.data(), Tp, qh, Q.st, doh, dO.st, j0, seq_end[j0], D, dk_acc.data(),
                                dv_acc.data());
      }
      for (int64_t j = 0; j < T; ++j) {
        std::copy_n(dk_acc.data() + j * D, D, dkp + ((b * T + j) * Hkv + g) * D);
        std::copy_n(dv_acc.data() + j * D, D, dvp + ((b * T + j) * Hkv + g) * D);
      }
    }
  });
  return {dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)};
}

std::tuple<Tensor, Tensor> causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                            const c10::optional<Tensor>& starts) {
  check(q, k, v);
  const Starts st = starts_of(starts, q);
  return q.size(3) % 16 == 0 ? forward_impl<16>(q, k, v, scale, st) : forward_impl<8>(q, k, v, scale, st);
}

std::tuple<Tensor, Tensor, Tensor> causal_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                                             const Tensor& v, const Tensor& o, const Tensor& lse,
                                                             double scale, const c10::optional<Tensor>& starts) {
  check(q, k, v);
  TORCH_CHECK(dout.sizes() == q.sizes() && o.sizes() == q.sizes(), "causal_attention_backward: shapes differ");
  const Starts st = starts_of(starts, q);
  return q.size(3) % 16 == 0 ? backward_impl<16>(dout, q, k, v, o, lse, scale, st)
                             : backward_impl<8>(dout, q, k, v, o, lse, scale, st);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(seqlab, m) {
  m.def("causal_attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? starts=None) -> (Tensor, Tensor)");
  m.def(
      "causal_attention_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale, "
      "Tensor? starts=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(seqlab, CPU, m) {
  m.impl("causal_attention", causal_attention);
  m.impl("causal_attention_backward", causal_attention_backward);
}
