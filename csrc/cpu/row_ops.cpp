// The CPU kernels' row loops. On CPUs with AVX-512, float rows go in explicit packs of 16
// (exp_pack.h), the reductions' partial results held in registers (rows of at most 16 columns
// 16 rows at a time, one per lane: scan_row_block); float64 rows, and float rows elsewhere (see
// packs_pay), in loops written so the compiler vectorises them: no branches in the bodies,
// reductions declared to OpenMP SIMD. They are nearly all of the loss's time at large C
// (an exp per logit), so on x86-64 with GCC the float versions are compiled three times —
// AVX-512, AVX2+FMA and the baseline SSE2 — and the loader picks the best the CPU has
// (function multiversioning, resolved once through an ifunc). The build itself keeps targeting
// baseline x86-64, so the library runs on any x86-64 CPU. Torch-free, like the math headers:
// the C++ test of the math links this file alone.
#include "row_ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <type_traits>

#include "exp_pack.h"

namespace rankmixup::cpu {

// (RANKMIXUP_NO_ISA_CLONES: the C++ tests built for one ISA.)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__ELF__) && \
    !defined(RANKMIXUP_NO_ISA_CLONES)
#define RANKMIXUP_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define RANKMIXUP_HAS_ISA_CLONES 1
#else
#define RANKMIXUP_ISA_CLONES
#endif

namespace {

// A pack of 16 floats is one AVX-512 register, and there the packed loops are the fastest. In
// the AVX2 and SSE2 clones GCC splits each pack into 2 or 4 registers and spills most of them:
// measured on the 2-core machine, a row scan then took 6-9x the time of the OpenMP-SIMD loops
// (180 against 45 ns a row at C=10, 600 against 88 at C=100). So packs are taken only on a CPU
// of the x86-64-v4 level, the one the loader gives the AVX-512 clone, and not when
// ATEN_CPU_CAPABILITY, PyTorch's switch for its own CPU kernels, asks for less ("avx2" or
// "default"; like PyTorch, other values are ignored). Decided once, at the first call. Never
// without GCC's clones (Clang, other compilers and architectures run the OpenMP-SIMD loops),
// nor where RANKMIXUP_NO_PACKS is defined (the C++ test of the loops without them).
#if defined(RANKMIXUP_FLOAT_PACKS) && defined(RANKMIXUP_HAS_ISA_CLONES) && !defined(RANKMIXUP_NO_PACKS)
bool decide_packs() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string_view capability = env ? env : "";
  return capability != "avx2" && capability != "default" && __builtin_cpu_supports("x86-64-v4");
}

inline bool packs_pay() {
  static const bool packs = decide_packs();
  return packs;
}
#else
constexpr bool packs_pay() { return false; }
#endif

// The bodies, inlined into each ISA's clone (a function is compiled for the ISA of its caller
// when inlined, so these must never be called out of line).

// Any row: float64 ones, and float ones where there are no packs (see exp_pack.h).
template <class T, bool kStoreExps>
[[gnu::always_inline]] inline RowScan<T> scan_simd_row(const T* z, int64_t n, T* exps) {
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
// float rows in packs of 16 (GCC/Clang's vector extension: one AVX-512 register, two AVX2 or
// four SSE2 ones), the reductions' partial results held in packs, so in registers; the last
// partial pack is loaded padded with -inf (no max; an exp that is then masked out). A row of up
// to 16 columns (CIFAR-10 has 10 classes) is that one partial pack.
constexpr int kPack = 16;
static_assert(kPack == kBlockRows, "scan_row_block puts a block's rows in one pack's lanes");
constexpr IntPack kLane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
constexpr float kInf = std::numeric_limits<float>::infinity();

// Every lane of the result holds op over all 16 lanes of v (in a fixed, data-independent order).
template <class Pack, class Op>
[[gnu::always_inline]] inline Pack all_lanes(Pack v, Op op) {
  v = op(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = op(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  v = op(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  return op(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
}

// Inlined, as every function taking packs must be (exp_pack.h).
constexpr auto kAdd = [](auto a, auto b) __attribute__((always_inline)) { return a + b; };
constexpr auto kMax = [](auto a, auto b) __attribute__((always_inline)) { return a > b ? a : b; };
constexpr auto kMin = [](auto a, auto b) __attribute__((always_inline)) { return a < b ? a : b; };

[[gnu::always_inline]] inline FloatPack load_pack(const float* in) {
  FloatPack x;
  __builtin_memcpy(&x, in, sizeof x);
  return x;
}

[[gnu::always_inline]] inline void store_pack(FloatPack v, float* out) { __builtin_memcpy(out, &v, sizeof v); }

// in[0..n), 0 < n <= kPack, padded with -inf.
[[gnu::always_inline]] inline FloatPack load_partial_pack(const float* in, int n) {
  float lanes[kPack];
#pragma omp simd
  for (int l = 0; l < kPack; ++l) lanes[l] = l < n ? in[l] : -kInf;
  return load_pack(lanes);
}

[[gnu::always_inline]] inline void store_partial_pack(FloatPack v, int n, float* out) {
#pragma omp simd
  for (int l = 0; l < kPack; ++l) {
    if (l < n) out[l] = v[l];  // a masked store
  }
}

template <bool kStoreExps>
[[gnu::always_inline]] inline RowScan<float> scan_packed_row(const float* z, int64_t n, float* exps,
                                                             const float* next_row) {
  const int64_t whole = n - n % kPack;  // columns in whole packs
  const int tail = static_cast<int>(n - whole);
  const IntPack tail_lanes = kLane < tail;

  // Per lane: the max, and the column of its first occurrence (a strictly greater value moves
  // it), from which the row's first argmax follows; and the logit sum.
  FloatPack lane_max = FloatPack{} - kInf, sum{};
  IntPack lane_argmax{};
  const auto push = [&](FloatPack x, FloatPack x_or_zero, int64_t c) __attribute__((always_inline)) {
    const IntPack above = x > lane_max;
    lane_max = above ? x : lane_max;
    lane_argmax = above ? kLane + static_cast<int32_t>(c) : lane_argmax;
    sum += x_or_zero;
  };
  for (int64_t c = 0; c < whole; c += kPack) {
    const FloatPack x = load_pack(z + c);
    push(x, x, c);
  }
  if (tail) {
    const FloatPack x = load_partial_pack(z + whole, tail);
    push(x, tail_lanes ? x : FloatPack{}, whole);
  }

  RowScan<float> out;
  out.sum = all_lanes(sum, kAdd)[0];
  const FloatPack row_max = all_lanes(lane_max, kMax);
  if (poisons_row(out.sum, row_max[0])) {
    out.stats.poison();
    return out;
  }
  out.stats.max = row_max[0];
  // Lanes that never held the max (-inf padding included) offer n: never the minimum.
  out.stats.argmax = all_lanes(lane_max == row_max ? lane_argmax : IntPack{} + static_cast<int32_t>(n), kMin)[0];

  // This loop computes while the first one waited on memory: it fetches the next row, a cache
  // line (a pack) an iteration, so that the next row's first loop finds it in cache.
  const float* ahead = next_row ? next_row : z;
  FloatPack sumexp{};
  for (int64_t c = 0; c < whole; c += kPack) {
    __builtin_prefetch(ahead + c);
    const FloatPack e = exp_nonpositive(load_pack(z + c) - row_max);
    sumexp += e;
    if constexpr (kStoreExps) store_pack(e, exps + c);
  }
  if (tail) {
    // The padding's exp(-inf - max) is clamped, never NaN: computed, then masked out.
    const FloatPack e = tail_lanes ? exp_nonpositive(load_partial_pack(z + whole, tail) - row_max) : FloatPack{};
    sumexp += e;
    if constexpr (kStoreExps) store_partial_pack(e, tail, exps + whole);
  }
  out.stats.sumexp = all_lanes(sumexp, kAdd)[0];
  return out;
}

// out[c] = scale * f(in[c]) + constant + g's terms at the argmax and the target (see grad_row).
template <class F>
[[gnu::always_inline]] inline void packed_grad_row(const float* in, int64_t n, float scale, const RowGrad<float>& g,
                                                   float* out, F f) {
  const int64_t whole = n - n % kPack;
  const int tail = static_cast<int>(n - whole);
  for (int64_t c = 0; c < whole; c += kPack) store_pack(scale * f(load_pack(in + c)) + g.constant, out + c);
  if (tail) {
    // The point terms that fall in this pack are added in it: reading back a lane of a masked
    // store would stall on the store. (Indices relative to the pack; the others match no lane.)
    const FloatPack zero{};
    const FloatPack y = scale * f(load_partial_pack(in + whole, tail)) + g.constant +
                        (kLane == static_cast<int32_t>(g.argmax - whole) ? g.at_max : zero) +
                        (kLane == static_cast<int32_t>(g.target - whole) ? g.at_target : zero);
    store_partial_pack(y, tail, out + whole);
  }
  if (g.argmax < whole) out[g.argmax] += g.at_max;
  if (g.target >= 0 && g.target < whole) out[g.target] += g.at_target;
}


// A 16 x 16 matrix held as 16 packs (its rows), transposed in place: swap_blocks<b> swaps the
// off-diagonal b x b blocks of every 2b x 2b block, one two-source shuffle per row, and b = 8,
// 4, 2, 1 in turn transpose the whole.
template <int b>
[[gnu::always_inline]] inline void swap_blocks(FloatPack* m) {
#pragma GCC unroll 16
  for (int i = 0; i < kPack; ++i) {
    if (i & b) continue;
    const FloatPack top = m[i], bottom = m[i + b];  // rows i and i + b; lanes of `bottom` are 16..31
    if constexpr (b == 8) {
      m[i] = __builtin_shufflevector(top, bottom, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
      m[i + b] = __builtin_shufflevector(top, bottom, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    } else if constexpr (b == 4) {
      m[i] = __builtin_shufflevector(top, bottom, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
      m[i + b] = __builtin_shufflevector(top, bottom, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    } else if constexpr (b == 2) {
      m[i] = __builtin_shufflevector(top, bottom, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
      m[i + b] = __builtin_shufflevector(top, bottom, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    } else {
      static_assert(b == 1);
      m[i] = __builtin_shufflevector(top, bottom, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
      m[i + b] = __builtin_shufflevector(top, bottom, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    }
  }
}

[[gnu::always_inline]] inline void transpose(FloatPack* m) {
  swap_blocks<8>(m);
  swap_blocks<4>(m);
  swap_blocks<2>(m);
  swap_blocks<1>(m);
}

// The rows are loaded as packs and transposed, so that pack c holds column c of every row:
// the reductions over a row become lane-wise operations over the columns, and the exps of 16
// rows are computed at once. The loops run to kPack with the bounds inside them, unrolled, so
// that the 16 packs can stay in registers (AVX-512 has room for them; AVX2 and SSE2 clones
// spill some to the stack).
template <bool kStoreExps>
[[gnu::always_inline]] inline void scan_block_body(const float* z, int rows, int n, float* exps,
                                                   RowScan<float>* out) {
  FloatPack m[kPack];
#pragma GCC unroll 16
  for (int i = 0; i < kPack; ++i) m[i] = i < rows ? load_partial_pack(z + i * n, n) : FloatPack{};
  transpose(m);

  // As in scan_packed_row: a strictly greater value moves the argmax, so ties keep the first.
  FloatPack lane_max = m[0], sum = m[0];
  IntPack lane_argmax{};
#pragma GCC unroll 16
  for (int c = 1; c < kPack; ++c) {
    if (c >= n) break;
    const IntPack above = m[c] > lane_max;
    lane_max = above ? m[c] : lane_max;
    lane_argmax = above ? IntPack{} + c : lane_argmax;
    sum += m[c];
  }
  FloatPack sumexp{};
#pragma GCC unroll 16
  for (int c = 0; c < kPack; ++c) {
    m[c] = c < n ? exp_nonpositive(m[c] - lane_max) : FloatPack{};
    sumexp += m[c];
  }
  if constexpr (kStoreExps) {
    transpose(m);
#pragma GCC unroll 16
    for (int i = 0; i < kPack; ++i) {
      if (i < rows) store_partial_pack(m[i], n, exps + i * n);
    }
  }

  alignas(64) float max_of[kPack], sum_of[kPack], sumexp_of[kPack];
  alignas(64) int32_t argmax_of[kPack];
  store_pack(lane_max, max_of);
  store_pack(sum, sum_of);
  store_pack(sumexp, sumexp_of);
  __builtin_memcpy(argmax_of, &lane_argmax, sizeof argmax_of);
  for (int i = 0; i < rows; ++i) {
    RowScan<float> scan;  // every field written: `out` may hold an earlier block's rows
    scan.sum = sum_of[i];
    if (poisons_row(sum_of[i], max_of[i])) {
      scan.stats.poison();  // as scan_row leaves it: argmax 0
    } else {
      scan.stats.max = max_of[i];
      scan.stats.argmax = argmax_of[i];
      scan.stats.sumexp = sumexp_of[i];
    }
    out[i] = scan;
  }
}

#endif  // RANKMIXUP_FLOAT_PACKS

template <class T>
[[gnu::always_inline]] inline RowScan<T> scan_row_body(const T* z, int64_t n, T* exps, const T* next_row) {
  // float64 rows are not packed (the library exp does not vectorise): the general loops.
#ifdef RANKMIXUP_FLOAT_PACKS
  if constexpr (std::is_same_v<T, float>) {
    if (packs_pay()) {
      return exps ? scan_packed_row<true>(z, n, exps, next_row) : scan_packed_row<false>(z, n, exps, next_row);
    }
  }
#endif
  return exps ? scan_simd_row<T, true>(z, n, exps) : scan_simd_row<T, false>(z, n, exps);
}

// out[c] = scale * f(in[c]) + constant + g's terms at the argmax and the target, over a row;
// f maps a value, or a pack of them.
template <class T, class F>
[[gnu::always_inline]] inline void grad_row(const T* in, int64_t n, T scale, const RowGrad<T>& g, T* out, F f) {
#ifdef RANKMIXUP_FLOAT_PACKS
  if constexpr (std::is_same_v<T, float>) {
    if (packs_pay()) {
      packed_grad_row(in, n, scale, g, out, f);
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
[[gnu::always_inline]] inline void write_grad_row_body(const T* z, int64_t n, T max, const RowGrad<T>& g, T* out) {
  grad_row(z, n, g.scale_p, g, out, [max](auto x) __attribute__((always_inline)) { return exp_nonpositive(x - max); });
}

template <class T>
[[gnu::always_inline]] inline void finish_grad_row_body(const T* exps, int64_t n, const RowStats<T>& stats,
                                                        const RowGrad<T>& g, T* out) {
  if (std::isnan(stats.max)) {  // poisoned: exps were never written
    std::fill_n(out, n, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  // softmax = exps / sumexp
  grad_row(exps, n, g.scale_p / stats.sumexp, g, out, [](auto e) __attribute__((always_inline)) { return e; });
}

}  // namespace

bool uses_packed_rows() { return packs_pay(); }

RANKMIXUP_ISA_CLONES RowScan<float> scan_row(const float* z, int64_t n, float* exps, const float* next_row) {
  return scan_row_body(z, n, exps, next_row);
}

RANKMIXUP_ISA_CLONES void scan_row_block(const float* z, int64_t rows, int64_t n, float* exps, RowScan<float>* out) {
#ifdef RANKMIXUP_FLOAT_PACKS
  if (packs_pay()) {
    const auto rows32 = static_cast<int>(rows), n32 = static_cast<int>(n);  // both <= kBlockRows
    exps ? scan_block_body<true>(z, rows32, n32, exps, out) : scan_block_body<false>(z, rows32, n32, exps, out);
    return;
  }
#endif
  for (int64_t i = 0; i < rows; ++i) {
    out[i] = scan_row_body<float>(z + i * n, n, exps ? exps + i * n : nullptr, nullptr);
  }
}

RANKMIXUP_ISA_CLONES void write_grad_row(const float* z, int64_t n, float max, const RowGrad<float>& g, float* out) {
  write_grad_row_body(z, n, max, g, out);
}

RANKMIXUP_ISA_CLONES void finish_grad_row(const float* exps, int64_t n, const RowStats<float>& stats,
                                          const RowGrad<float>& g, float* out) {
  finish_grad_row_body(exps, n, stats, g, out);
}

RANKMIXUP_ISA_CLONES void widen_bfloat16_row(const uint16_t* in, int64_t n, float* out) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = std::bit_cast<float>(static_cast<uint32_t>(in[c]) << 16);
}

RANKMIXUP_ISA_CLONES void narrow_to_bfloat16_row(const float* in, int64_t n, uint16_t* out) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const uint32_t bits = std::bit_cast<uint32_t>(in[c]);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    out[c] = in[c] != in[c] ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
  }
}

// float64 uses the library exp, which does not vectorise: one version is all it needs.
RowScan<double> scan_row(const double* z, int64_t n, double* exps, const double* next_row) {
  return scan_row_body(z, n, exps, next_row);
}

void write_grad_row(const double* z, int64_t n, double max, const RowGrad<double>& g, double* out) {
  write_grad_row_body(z, n, max, g, out);
}

void finish_grad_row(const double* exps, int64_t n, const RowStats<double>& stats, const RowGrad<double>& g,
                     double* out) {
  finish_grad_row_body(exps, n, stats, g, out);
}

}  // namespace rankmixup::cpu
