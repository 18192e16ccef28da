// Loops over one contiguous row of logits (defined in row_ops.cpp, compiled there for several
// x86 ISAs), and the exp they use: plain arithmetic, because std::exp is a library call, which
// no compiler vectorises without -ffast-math.
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

// Statistics and logit sum of the row z[0..n) (n >= 1); a row holding a NaN or an infinity
// comes back poisoned (RowStats::poison).
RowScan<float> scan_row(const float* z, int64_t n);
RowScan<double> scan_row(const double* z, int64_t n);

// out[c] = d loss / d z_c for the row z[0..n) with log-sum-exp `lse` (see RowGrad).
void write_grad_row(const float* z, int64_t n, float lse, const RowGrad<float>& g, float* out);
void write_grad_row(const double* z, int64_t n, double lse, const RowGrad<double>& g, double* out);

}  // namespace rankmixup::cpu
