// Vector helpers shared by seqlab's native kernels (decode.cpp, attention.cpp): GCC/Clang
// vector extensions (one AVX-512 register holds 16 floats; the compiler splits wider
// types on smaller machines), a tree horizontal sum, and a vector exp for x <= 0.
#pragma once

#include <cstdint>
#include <cstring>

namespace seqlab_vec {

template <int W>
struct Vec {
  typedef float type __attribute__((vector_size(4 * W)));
};

template <int W>
struct IVec {
  typedef int32_t type __attribute__((vector_size(4 * W)));
};

template <int W>
inline typename Vec<W>::type load(const float* p) {
  typename Vec<W>::type v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <int W>
inline float hsum(typename Vec<W>::type v) {
  if constexpr (W == 4) {
    return (v[0] + v[2]) + (v[1] + v[3]);
  } else {  // add the halves, then recurse: a tree, not a chain
    typename Vec<W / 2>::type lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return hsum<W / 2>(lo + hi);
  }
}

// work items of roughly this many multiply-adds per thread: fewer wake the second thread
// for less than its start-up cost
constexpr int64_t kGrainFlops = 1 << 16;

// exp(x) for x <= 0 (softmax after subtracting the max), W lanes at a time: Cephes'
// expf (2^n times a degree-5 polynomial on [-ln2/2, ln2/2]; about 1 ulp), and exactly 0
// below -87 (masked keys are -inf). A scalar std::exp per key costs more than the rest of
// the attention loop.
template <int W>
inline typename Vec<W>::type exp_nonpos(typename Vec<W>::type x) {
  using V = typename Vec<W>::type;
  using I = typename IVec<W>::type;
  const V zero = {};
  const I keep = x > V{} - 87.0f;  // lanes all ones where exp(x) is a normal float
  x = x > V{} - 87.0f ? x : zero;  // (select avoids inf/nan arithmetic on masked lanes)
  const V fx = x * 1.44269504088896341f + 0.5f;
  I n = __builtin_convertvector(fx, I);  // rounds toward zero ...
  n += __builtin_convertvector(n, V) > fx;  // ... so step down where that went up: floor (true is -1)
  const V nf = __builtin_convertvector(n, V);
  V r = x - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  V y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const I bits = (n + 127) << 23;  // 2^n as a float's exponent field
  V two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  y = y * two_n;
  I out;
  std::memcpy(&out, &y, sizeof out);
  out &= keep;
  std::memcpy(&y, &out, sizeof y);
  return y;
}

// the largest lane
template <int W>
inline float hmax(typename Vec<W>::type v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

template <int W>
inline void store(float* p, typename Vec<W>::type v) {
  std::memcpy(p, &v, sizeof v);
}

// s[0..len) = exp(s - m) in place (len a multiple of W; -inf lanes become 0), returning
// the sum: the softmax numerators and denominator of every kernel here.
template <int W>
inline float exp_sum(float* s, int64_t len, float m) {
  using V = typename Vec<W>::type;
  V sum = {};
  for (int64_t j = 0; j < len; j += W) {
    const V e = exp_nonpos<W>(load<W>(s + j) - m);
    store<W>(s + j, e);
    sum += e;
  }
  return hsum<W>(sum);
}

// out[0..D) = factor * sum_{j < n} w[j] * rows[j * stride + 0..D), W floats at a time (D a
// multiple of W): attention's p.v and its gradient's ds.k.
template <int W>
inline void weighted_row_sum(const float* w, int64_t n, const float* rows, int64_t stride, int64_t D, float factor,
                             float* out) {
  using V = typename Vec<W>::type;
  for (int64_t d = 0; d < D; d += W) {
    V a0 = {}, a1 = {};  // two accumulators: consecutive rows do not wait on each other
    int64_t j = 0;
    for (; j + 1 < n; j += 2) {
      a0 += w[j] * load<W>(rows + j * stride + d);
      a1 += w[j + 1] * load<W>(rows + (j + 1) * stride + d);
    }
    if (j < n) a0 += w[j] * load<W>(rows + j * stride + d);
    store<W>(out + d, (a0 + a1) * factor);
  }
}

}  // namespace seqlab_vec
