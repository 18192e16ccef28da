// The exp of the CPU row loops (row_ops.cpp), for a float or a pack of 16: plain arithmetic,
// because std::exp is a library call, which no compiler vectorises without -ffast-math. Only
// row_ops.cpp and the C++ test of the math include this.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace rankmixup::cpu {

// Every helper here is always inlined: a 64-byte vector passed to an out-of-line copy would
// use the calling convention of that copy's ISA, not of the caller's clone (row_ops.cpp).
#define RANKMIXUP_PACK_INLINE [[gnu::always_inline]] inline

// The conversions exp_nonpositive needs, for a float and (below) for a pack.
RANKMIXUP_PACK_INLINE int32_t to_int(float x) { return static_cast<int32_t>(x); }  // truncates
RANKMIXUP_PACK_INLINE float to_float(int32_t n) { return static_cast<float>(n); }
RANKMIXUP_PACK_INLINE float float_from_bits(int32_t n) { return std::bit_cast<float>(n); }

// 16 floats (64 bytes) as one value, in the vector extension of Clang and GCC 12+ (which has
// __builtin_shufflevector): the compiler maps it to one AVX-512 register, two AVX2 or four SSE2
// ones, as the target ISA of the function has. Elsewhere the row loops do without packs.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define RANKMIXUP_FLOAT_PACKS 1
using FloatPack = float __attribute__((vector_size(64)));
using IntPack = int32_t __attribute__((vector_size(64)));  // its lane indices and masks

RANKMIXUP_PACK_INLINE IntPack to_int(FloatPack x) { return __builtin_convertvector(x, IntPack); }
RANKMIXUP_PACK_INLINE FloatPack to_float(IntPack n) { return __builtin_convertvector(n, FloatPack); }
RANKMIXUP_PACK_INLINE FloatPack float_from_bits(IntPack n) { return std::bit_cast<FloatPack>(n); }
#endif

// exp(x) for x <= 0, to ~2 ulp (Cephes' polynomial on [-ln2/2, ln2/2]), for a float or a
// vector-extension pack of them. Results below FLT_MIN (x < -87.3) come out as FLT_MIN-sized
// values, not denormals: they only ever add to a sum that holds a 1, or scale a probability
// that is then below every tolerance.
template <class V>
RANKMIXUP_PACK_INLINE V exp_nonpositive(V x) {
  const V lowest = V{} + -87.3365f;  // the value for a float, broadcast for a pack
  x = x < lowest ? lowest : x;
  // x * log2(e) <= 0, so truncating (v - 0.5) rounds v to the nearest integer.
  const auto n = to_int(x * 1.44269504088896341f - 0.5f);
  const V fn = to_float(n);
  const V r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;  // x - n ln2, in two parts
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * float_from_bits((n + 127) << 23);
}

// float64 keeps the library exp: exactness over speed for the dtype chosen for exactness.
inline double exp_nonpositive(double x) { return std::exp(x); }

}  // namespace rankmixup::cpu
