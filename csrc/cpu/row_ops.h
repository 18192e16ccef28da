// Loops over one contiguous row of logits, defined in row_ops.cpp (compiled there for several
// x86 ISAs).
#pragma once

#include <cmath>
#include <cstdint>

#include "rankmixup/row_stats.h"
#include "rankmixup/sample_loss.h"

namespace rankmixup::cpu {

template <class T>
struct RowScan {
  RowStats<T> stats;
  T sum;  // sum of the logits (label smoothing needs it)
};

// Statistics and logit sum of the row z[0..n) (n >= 1); a row that poisons_row comes back
// poisoned (RowStats::poison). If `exps` is not null, any other row also leaves
// exps[c] = exp(z[c] - max) there, for finish_grad_row (a poisoned one leaves it untouched).
// `next_row`, if not null, is the row of n values the caller scans next: the float version
// fetches it into cache meanwhile.
RowScan<float> scan_row(const float* z, int64_t n, float* exps = nullptr, const float* next_row = nullptr);
RowScan<double> scan_row(const double* z, int64_t n, double* exps = nullptr, const double* next_row = nullptr);

// Whether float rows go through the packed (AVX-512) loops in this process, rather than the
// OpenMP-SIMD ones (row_ops.cpp says when they do).
bool uses_packed_rows();

// Rows with few columns (CIFAR-10 has 10 classes) are scanned kBlockRows at a time, one row per
// vector lane: a row of one partial pack spends most of scan_row's time in the reductions
// across lanes and in their latency, which a lane per row does without.
constexpr int64_t kBlockRows = 16;

// scan_row of `rows` (1..kBlockRows) rows of n (1..kBlockRows) columns, row i at z + i * n:
// the same statistics for each, its sums added in another order (the last bit may differ; a sum
// within rounding of the float range may overflow, and so poison the row, in one order only).
// If `exps` is not null, every row's exps go to exps + i * n (a poisoned row's are unspecified:
// finish_grad_row does not read them).
void scan_row_block(const float* z, int64_t rows, int64_t n, float* exps, RowScan<float>* out);

// out[c] = d loss / d z_c for the row z[0..n) with maximum `max`, g.scale_p applying to
// exp(z_c - max) as unpack_row gives it (sample_loss.h).
void write_grad_row(const float* z, int64_t n, float max, const RowGrad<float>& g, float* out);
void write_grad_row(const double* z, int64_t n, double max, const RowGrad<double>& g, double* out);

// The same gradient from the exps scan_row left and the row's statistics, without a second
// exp per logit; `out` may be `exps` itself. A poisoned row gets NaN everywhere, as
// write_grad_row gives it.
void finish_grad_row(const float* exps, int64_t n, const RowStats<float>& stats, const RowGrad<float>& g, float* out);
void finish_grad_row(const double* exps, int64_t n, const RowStats<double>& stats, const RowGrad<double>& g,
                     double* out);

// bfloat16 rows, as their bits, to and from float: widening is exact; narrowing rounds to
// nearest even and turns a NaN into 0x7FC0, bit for bit as c10::BFloat16 does.
void widen_bfloat16_row(const uint16_t* in, int64_t n, float* out);
void narrow_to_bfloat16_row(const float* in, int64_t n, uint16_t* out);

}  // namespace rankmixup::cpu
