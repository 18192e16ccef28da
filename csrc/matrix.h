// (K, B) matrices of any strides, as the mixing kernels read lam, index and CutMix's boxes, on
// the host (cpu/) or a device (cuda/): one definition for both.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "rankmixup/boxes.h"
#include "rankmixup/host_device.h"

namespace rankmixup {

// lam is often an expanded (K,) view, stride 0.
template <class T>
struct Matrix {
  const T* data;
  int64_t stride_k, stride_b;
  explicit Matrix(const at::Tensor& t) : data(t.const_data_ptr<T>()), stride_k(t.stride(0)), stride_b(t.stride(1)) {}
  RANKMIXUP_HD T operator()(int64_t k, int64_t b) const { return data[k * stride_k + b * stride_b]; }
};

// boxes int64 (K, B, 4).
inline BoxMatrix box_matrix(const at::Tensor& boxes) {
  return {boxes.const_data_ptr<int64_t>(), boxes.stride(0), boxes.stride(1), boxes.stride(2)};
}

}  // namespace rankmixup
