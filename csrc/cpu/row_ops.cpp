// The CPU kernels' row loops, written so the compiler vectorises them: no branches in the
// bodies, reductions declared to OpenMP SIMD, and rows of up to 16 floats held in one explicit
// pack. They are nearly all of the loss's time at large C (an exp per logit), so on x86-64 with
// GCC the float versions are compiled three times — AVX-512, AVX2+FMA and the baseline SSE2 —
// and the loader picks the best the CPU has (function multiversioning, resolved once through an
// ifunc). The build itself keeps
// targeting baseline x86-64, so the library runs on any x86-64 CPU. Torch-free, like the math
// headers: the C++ test of the math links this file alone.
#include "row_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "exp_pack.h"

namespace rankmixup::cpu {

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__ELF__)
#define RANKMIXUP_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RANKMIXUP_ISA_CLONES
#endif

namespace {

// The bodies, inlined into each ISA's clone (a function is compiled for the ISA of its caller
// when inlined, so these must never be called out of line).

// Any row (float rows of more than 16 columns, where packs exist: see exp_pack.h).
template <class T, bool kStoreExps>
[[gnu::always_inline]] inline RowScan<T> scan_long_row(const T* z, int64_t n, T* exps) {
  T max = z[0];
  T sum = T(0);
#pragma omp simd reduction(max : max) reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) {
    max = z[c] > max ? z[c] : max;
    sum += z[c];
  }
  RowScan<T> out;
  out.sum = sum;
  if (poisons_row(sum, max)) {
    out.stats.poison();
    return out;
  }
  // The first occurrence of the max (ties go to the lowest index), as a min-reduction in the
  // pass that sums the exponentials; over int32 lanes (n < 2^31, checked by the ops), twice as
  // many per vector as int64. A separate scalar search would cost more than the vector loops.
  const auto n32 = static_cast<int32_t>(n);
  int32_t argmax = n32;
  T sumexp = T(0);
#pragma omp simd reduction(min : argmax) reduction(+ : sumexp)
  for (int32_t c = 0; c < n32; ++c) {
    argmax = z[c] == max && c < argmax ? c : argmax;
    const T e = exp_nonpositive(z[c] - max);
    sumexp += e;
    if constexpr (kStoreExps) exps[c] = e;
  }
  out.stats.max = max;
  out.stats.argmax = argmax;
  out.stats.sumexp = sumexp;
  return out;
}

#ifdef RANKMIXUP_FLOAT_PACKS
// Rows of at most kShortRow columns (CIFAR-10 has 10 classes) fit one pack of 16 floats in
// GCC/Clang's vector extension (one AVX-512 register, two AVX2 or four SSE2 ones): loaded once
// with -inf padding, reduced across lanes by shuffles. The general loops would spend more on
// their remainder handling than on the row.
constexpr int kShortRow = 16;
constexpr IntPack kLane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// Every lane of the result holds op over all 16 lanes of v (in a fixed, data-independent order).
template <class Pack, class Op>
[[gnu::always_inline]] inline Pack all_lanes(Pack v, Op op) {
  v = op(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = op(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  return op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
}

// The row in[0..n), n <= kShortRow, padded with -inf (no max; an exp that underflows).
[[gnu::always_inline]] inline FloatPack load_short_row(const float* in, int n) {
  float lanes[kShortRow];
#pragma omp simd
  for (int l = 0; l < kShortRow; ++l) lanes[l] = l < n ? in[l] : -std::numeric_limits<float>::infinity();
  FloatPack x;
  __builtin_memcpy(&x, lanes, sizeof x);
  return x;
}

[[gnu::always_inline]] inline void store_short_row(FloatPack v, int n, float* out) {
#pragma omp simd
  for (int l = 0; l < kShortRow; ++l) {
    if (l < n) out[l] = v[l];  // a masked store
  }
}

[[gnu::always_inline]] inline RowScan<float> scan_short_row(const float* z, int n, float* exps) {
  const FloatPack x = load_short_row(z, n);
  const IntPack in_row = kLane < n;
  // Inlined, as every function taking packs must be (exp_pack.h).
  const auto add = [](auto a, auto b) __attribute__((always_inline)) { return a + b; };
  const auto max = [](auto a, auto b) __attribute__((always_inline)) { return a > b ? a : b; };
  const auto min = [](auto a, auto b) __attribute__((always_inline)) { return a < b ? a : b; };

  RowScan<float> out;
  out.sum = all_lanes(in_row ? x : FloatPack{}, add)[0];
  // Every lane holds the max; the padding (-inf) never beats a logit, nor matches a finite max.
  const FloatPack row_max = all_lanes(x, max);
  if (poisons_row(out.sum, row_max[0])) {
    out.stats.poison();
    return out;
  }
  // The padding's exp(-inf - max) is clamped, never NaN: computed, then masked out.
  const FloatPack e = in_row ? exp_nonpositive(x - row_max) : FloatPack{};
  out.stats.max = row_max[0];
  out.stats.argmax = all_lanes(x == row_max ? kLane : IntPack{} + kShortRow, min)[0];
  out.stats.sumexp = all_lanes(e, add)[0];
  if (exps) store_short_row(e, n, exps);
  return out;
}

#endif  // RANKMIXUP_FLOAT_PACKS

template <class T>
[[gnu::always_inline]] inline RowScan<T> scan_row_body(const T* z, int64_t n, T* exps) {
  // float64 rows are not packed (the library exp does not vectorise): the general loops.
#ifdef RANKMIXUP_FLOAT_PACKS
  if constexpr (std::is_same_v<T, float>) {
    if (n <= kShortRow) return scan_short_row(z, static_cast<int>(n), exps);
  }
#endif
  return exps ? scan_long_row<T, true>(z, n, exps) : scan_long_row<T, false>(z, n, exps);
}

// out[c] = scale * f(in[c]) + constant + g's terms at the argmax and the target, over a row;
// f maps a value, or a pack of them.
template <class T, class F>
[[gnu::always_inline]] inline void grad_row(const T* in, int64_t n, T scale, const RowGrad<T>& g, T* out, F f) {
#ifdef RANKMIXUP_FLOAT_PACKS
  if constexpr (std::is_same_v<T, float>) {
    if (n <= kShortRow) {  // one pack, as in scan_short_row, the point terms added in it too
      const int cols = static_cast<int>(n);
      const FloatPack zero{};
      const FloatPack y = scale * f(load_short_row(in, cols)) + g.constant +
                          (kLane == static_cast<int32_t>(g.argmax) ? g.at_max : zero) +
                          (kLane == static_cast<int32_t>(g.target) ? g.at_target : zero);
      store_short_row(y, cols, out);
      return;
    }
  }
#endif
  const T constant = g.constant;
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = scale * f(in[c]) + constant;
  out[g.argmax] += g.at_max;
  if (g.target >= 0) out[g.target] += g.at_target;
}

template <class T>
[[gnu::always_inline]] inline void write_grad_row_body(const T* z, int64_t n, T lse, const RowGrad<T>& g, T* out) {
  grad_row(z, n, g.scale_p, g, out, [lse](auto x) __attribute__((always_inline)) { return exp_nonpositive(x - lse); });
}

template <class T>
[[gnu::always_inline]] inline void finish_grad_row_body(const T* exps, int64_t n, const RowStats<T>& stats,
                                                        const RowGrad<T>& g, T* out) {
  if (std::isnan(stats.max)) {  // poisoned: exps were never written
    std::fill_n(out, n, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  grad_row(exps, n, g.scale_p / stats.sumexp, g, out, [](auto e) __attribute__((always_inline)) { return e; });  // softmax = exps / sumexp
}

}  // namespace

RANKMIXUP_ISA_CLONES RowScan<float> scan_row(const float* z, int64_t n, float* exps) {
  return scan_row_body(z, n, exps);
}

RANKMIXUP_ISA_CLONES void write_grad_row(const float* z, int64_t n, float lse, const RowGrad<float>& g, float* out) {
  write_grad_row_body(z, n, lse, g, out);
}

RANKMIXUP_ISA_CLONES void finish_grad_row(const float* exps, int64_t n, const RowStats<float>& stats,
                                          const RowGrad<float>& g, float* out) {
  finish_grad_row_body(exps, n, stats, g, out);
}

// float64 uses the library exp, which does not vectorise: one version is all it needs.
RowScan<double> scan_row(const double* z, int64_t n, double* exps) { return scan_row_body(z, n, exps); }

void write_grad_row(const double* z, int64_t n, double lse, const RowGrad<double>& g, double* out) {
  write_grad_row_body(z, n, lse, g, out);
}

void finish_grad_row(const double* exps, int64_t n, const RowStats<double>& stats, const RowGrad<double>& g,
                     double* out) {
  finish_grad_row_body(exps, n, stats, g, out);
}

}  // namespace rankmixup::cpu
