// Row access to a 2-D tensor of any strides for the CPU kernels, which want contiguous rows
// in the accumulation type: rows that already are come back as pointers into the tensor;
// others (narrower dtype, or a column stride other than 1) are converted into scratch.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "row_ops.h"

namespace rankmixup::cpu {

template <class scalar_t>
class StridedRows {
 public:
  using acc_t = at::opmath_type<scalar_t>;

  explicit StridedRows(const at::Tensor& t)
      : data_(t.const_data_ptr<scalar_t>()), row_stride_(t.stride(0)), col_stride_(t.stride(1)), cols_(t.size(1)) {}

  bool needs_scratch() const { return !std::is_same_v<scalar_t, acc_t> || col_stride_ != 1; }

  // Row r in place, or null when it needs scratch (what a caller may prefetch).
  const acc_t* in_place(int64_t r) const {
    if (needs_scratch()) return nullptr;
    return reinterpret_cast<const acc_t*>(data_ + r * row_stride_);  // acc_t is scalar_t here
  }

  // Rows r .. r + count - 1 as `cols` contiguous acc_t each, one after the other (what
  // scan_row_block takes): in place when the tensor is laid out so, else converted into
  // `scratch` (room for count rows).
  const acc_t* packed_rows(int64_t r, int64_t count, acc_t* scratch) const {
    if (!needs_scratch() && row_stride_ == cols_) return in_place(r);
    for (int64_t i = 0; i < count; ++i) {
      const acc_t* src = row(r + i, scratch + i * cols_);
      if (src != scratch + i * cols_) std::copy_n(src, cols_, scratch + i * cols_);
    }
    return scratch;
  }

  // The value at row r, column c, as acc_t.
  acc_t at(int64_t r, int64_t c) const { return static_cast<acc_t>(data_[r * row_stride_ + c * col_stride_]); }

  // Row r, as `cols` contiguous acc_t; `scratch` (room for one row) is used only if needed.
  const acc_t* row(int64_t r, acc_t* scratch) const {
    const scalar_t* src = data_ + r * row_stride_;  // int64 offsets: rows * C may pass 2^31
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (col_stride_ == 1) return src;
    }
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {  // autocast's CPU dtype: the fast path
      if (col_stride_ == 1) {
        widen_bfloat16_row(reinterpret_cast<const uint16_t*>(src), cols_, scratch);
        return scratch;
      }
    }
    for (int64_t c = 0; c < cols_; ++c) scratch[c] = static_cast<acc_t>(src[c * col_stride_]);
    return scratch;
  }

 private:
  const scalar_t* data_;
  int64_t row_stride_, col_stride_, cols_;
};

}  // namespace rankmixup::cpu
