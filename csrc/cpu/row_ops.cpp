// The CPU kernels' row loops, written so the compiler vectorises them: no branches in the
// bodies, reductions declared to OpenMP SIMD. They are nearly all of the loss's time at large C
// (an exp per logit in each direction), so on x86-64 with GCC the float versions are compiled
// three times — AVX-512, AVX2+FMA and the baseline SSE2 — and the loader picks the best the CPU
// has (function multiversioning, resolved once through an ifunc). The build itself keeps
// targeting baseline x86-64, so the library runs on any x86-64 CPU. Torch-free, like the math
// headers: the C++ test of the math links this file alone.
#include "row_ops.h"

#include <cmath>
#include <limits>

namespace rankmixup::cpu {

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__ELF__)
#define RANKMIXUP_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RANKMIXUP_ISA_CLONES
#endif

namespace {

// The bodies, inlined into each ISA's clone (a function is compiled for the ISA of its caller
// when inlined, so these must never be called out of line).

// scan_row for rows of at most kShortRow columns (CIFAR-10 has 10 classes): loaded once into
// a block padded with -inf, every loop has a constant trip count and compiles to a few vector
// instructions, where the general loops would run their scalar epilogues over the whole row.
constexpr int kShortRow = 16;

template <class T>
[[gnu::always_inline]] inline RowScan<T> scan_short_row(const T* z, int n) {
  constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
  T v[kShortRow];
#pragma omp simd
  for (int l = 0; l < kShortRow; ++l) v[l] = l < n ? z[l] : kMinusInf;
  T max = kMinusInf, sum = T(0);
#pragma omp simd reduction(max : max) reduction(+ : sum)
  for (int l = 0; l < kShortRow; ++l) {
    max = v[l] > max ? v[l] : max;
    sum += l < n ? v[l] : T(0);
  }
  RowScan<T> out;
  out.sum = sum;
  if (!std::isfinite(sum)) {
    out.stats.poison();
    return out;
  }
  // Separate loops, `&` for `&&` (a short circuit is control flow): each stays one vector
  // step. The padding never equals the (finite) max.
  int32_t argmax = kShortRow;
#pragma omp simd reduction(min : argmax)
  for (int l = 0; l < kShortRow; ++l) argmax = (v[l] == max) & (l < argmax) ? l : argmax;
  T e[kShortRow];
#pragma omp simd
  for (int l = 0; l < kShortRow; ++l) e[l] = l < n ? exp_nonpositive(v[l] - max) : T(0);
  T sumexp = T(0);
  for (int l = 0; l < kShortRow; ++l) sumexp += e[l];
  out.stats.max = max;
  out.stats.argmax = argmax;
  out.stats.sumexp = sumexp;
  return out;
}

template <class T>
[[gnu::always_inline]] inline RowScan<T> scan_row_body(const T* z, int64_t n) {
  if (n <= kShortRow) return scan_short_row(z, static_cast<int>(n));
  T max = z[0];
  T sum = T(0);
#pragma omp simd reduction(max : max) reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) {
    max = z[c] > max ? z[c] : max;
    sum += z[c];
  }
  RowScan<T> out;
  out.sum = sum;
  if (!std::isfinite(sum)) {  // a NaN or an infinity somewhere in the row
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
    sumexp += exp_nonpositive(z[c] - max);
  }
  out.stats.max = max;
  out.stats.argmax = argmax;
  out.stats.sumexp = sumexp;
  return out;
}

template <class T>
[[gnu::always_inline]] inline void write_grad_row_body(const T* z, int64_t n, T lse, const RowGrad<T>& g, T* out) {
  const T scale_p = g.scale_p;
  const T constant = g.constant;
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = scale_p * exp_nonpositive(z[c] - lse) + constant;
  out[g.argmax] += g.at_max;
  if (g.target >= 0) out[g.target] += g.at_target;
}

}  // namespace

RANKMIXUP_ISA_CLONES RowScan<float> scan_row(const float* z, int64_t n) { return scan_row_body(z, n); }

RANKMIXUP_ISA_CLONES void write_grad_row(const float* z, int64_t n, float lse, const RowGrad<float>& g, float* out) {
  write_grad_row_body(z, n, lse, g, out);
}

// float64 uses the library exp, which does not vectorise: one version is all it needs.
RowScan<double> scan_row(const double* z, int64_t n) { return scan_row_body(z, n); }

void write_grad_row(const double* z, int64_t n, double lse, const RowGrad<double>& g, double* out) {
  write_grad_row_body(z, n, lse, g, out);
}

}  // namespace rankmixup::cpu
