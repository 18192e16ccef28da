// Loops over one contiguous row of logits, written so the compiler vectorises them: no
// branches in the bodies, reductions declared to OpenMP SIMD, and an exp that is plain
// arithmetic (std::exp is a library call, which no compiler vectorises without -ffast-math).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "rankmixup/row_stats.h"
#include "rankmixup/sample_loss.h"

namespace rankmixup::cpu {

// exp(x) for x <= 0, to ~2 ulp (Cephes' polynomial on [-ln2/2, ln2/2]). Results below
// FLT_MIN (x < -87.3) come out as FLT_MIN-sized values, not denormals: they only ever add to a
// sum that holds a 1, or scale a probability that is then below every tolerance.
inline float exp_nonpositive(float x) {
  x = x < -87.3365f ? -87.3365f : x;
  // x * log2(e) <= 0, so truncating (v - 0.5) rounds v to the nearest integer.
  const int32_t n = static_cast<int32_t>(x * 1.44269504088896341f - 0.5f);
  const float fn = static_cast<float>(n);
  const float r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;  // x - n ln2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * std::bit_cast<float>((n + 127) << 23);
}

// float64 keeps the library exp: exactness over speed for the dtype chosen for exactness.
inline double exp_nonpositive(double x) { return std::exp(x); }

template <class T>
struct RowScan {
  RowStats<T> stats;
  T sum;  // sum of the logits (label smoothing needs it)
};

template <class T>
RowScan<T> scan_row(const T* z, int64_t n) {
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
  int64_t argmax = 0;
  while (z[argmax] != max) ++argmax;  // first occurrence: ties go to the lowest index
  T sumexp = T(0);
#pragma omp simd reduction(+ : sumexp)
  for (int64_t c = 0; c < n; ++c) sumexp += exp_nonpositive(z[c] - max);
  out.stats.max = max;
  out.stats.argmax = argmax;
  out.stats.sumexp = sumexp;
  return out;
}

// out[c] = d loss / d z_c for the row z with log-sum-exp `lse` (see RowGrad).
template <class T>
void write_grad_row(const T* z, int64_t n, T lse, const RowGrad<T>& g, T* out) {
  const T scale_p = g.scale_p;
  const T constant = g.constant;
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = scale_p * exp_nonpositive(z[c] - lse) + constant;
  out[g.argmax] += g.at_max;
  if (g.target >= 0) out[g.target] += g.at_target;
}

}  // namespace rankmixup::cpu
