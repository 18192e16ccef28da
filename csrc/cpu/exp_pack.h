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

// exp_nonpositive rounds by adding and subtracting a constant, which -ffast-math (reassociation)
// would fold away.
#if defined(__FAST_MATH__) || defined(__ASSOCIATIVE_MATH__)
#error "csrc/cpu/exp_pack.h must not be compiled with -ffast-math or -fassociative-math"
#endif

// The bit casts exp_nonpositive needs, for a float and (below) for a pack; unsigned, so that
// the exponent arithmetic on them wraps rather than overflows (a NaN's bits may be anything).
RANKMIXUP_PACK_INLINE uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }
RANKMIXUP_PACK_INLINE float float_from_bits(uint32_t n) { return std::bit_cast<float>(n); }

// 16 floats (64 bytes) as one value, in the vector extension of Clang and GCC 12+ (which has
// __builtin_shufflevector): the compiler maps it to one AVX-512 register, two AVX2 or four SSE2
// ones, as the target ISA of the function has. Elsewhere the row loops do without packs.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define RANKMIXUP_FLOAT_PACKS 1
using FloatPack = float __attribute__((vector_size(64)));
using IntPack = int32_t __attribute__((vector_size(64)));  // its lane indices and masks
using BitsPack = uint32_t __attribute__((vector_size(64)));

RANKMIXUP_PACK_INLINE BitsPack bits_of(FloatPack x) { return std::bit_cast<BitsPack>(x); }
RANKMIXUP_PACK_INLINE FloatPack float_from_bits(BitsPack n) { return std::bit_cast<FloatPack>(n); }
#endif

// exp(x) for x <= 0, to ~1 ulp, for a float or a vector-extension pack of them: 2^n * exp(r)
// with n = round(x / ln2) and r = x - n ln2 in [-ln2/2, ln2/2], exp(r) a degree-6 minimax
// polynomial (relative error 6e-9 with its float coefficients): about 15 vector instructions. Results
// below FLT_MIN (x < -87.3) come out as FLT_MIN-sized values, not denormals: they only ever add
// to a sum that holds a 1, or scale a probability that is then below every tolerance. A NaN
// stays NaN.
template <class V>
RANKMIXUP_PACK_INLINE V exp_nonpositive(V x) {
  const V lowest = V{} + -87.3365f;  // the value for a float, broadcast for a pack
  x = x < lowest ? lowest : x;
  // Adding 1.5 * 2^23 rounds x / ln2 (in [-126, 0]) to the integer n, held in the low
  // mantissa bits of t: no conversion instructions needed.
  constexpr float kRoundingShift = 12582912.0f;
  const V t = x * 1.44269504088896341f + kRoundingShift;
  const V fn = t - kRoundingShift;
  const V r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;  // x - n ln2, in two parts
  V p = V{} + 1.3893402647e-3f;
  p = p * r + 8.3702625707e-3f;
  p = p * r + 4.1667088866e-2f;
  p = p * r + 1.6666506231e-1f;
  p = p * r + 4.9999997020e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n: n + 127 in the exponent field. The shift drops t's own exponent bits, since n + 127
  // fits the 9 low bits.
  return p * float_from_bits((bits_of(t) + 127u) << 23);
}

// float64 keeps the library exp: exactness over speed for the dtype chosen for exactness.
inline double exp_nonpositive(double x) { return std::exp(x); }

}  // namespace rankmixup::cpu
