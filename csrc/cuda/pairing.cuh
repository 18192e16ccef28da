// The pairing of mixes on CUDA, shared by mixup (mix.cu) and CutMix (cutmix.cu): the inverse
// permutation through which the backward kernels gather instead of scattering.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "matrix.h"

namespace rankmixup::cuda {

// inverse[k*B + index[k,b]] = b for the in-range entries of index (K, B), int64 (K*B,), in one
// launch on `stream`. Slots no entry names stay unwritten (uninitialised), so a backward that
// trusts a slot must first check index[k, inverse[k*B + b]] == b (a row that is not a
// permutation cannot be reported without a host sync).
at::Tensor inverse_permutation(const at::Tensor& index, cudaStream_t stream);

// Whether inverse[k*B + b] names a j with index[k, j] == b, i.e. a slot inverse_permutation wrote.
__device__ inline bool names_partner(const Matrix<int64_t>& index, int64_t k, int64_t b, int64_t j, int64_t batch) {
  return j >= 0 && j < batch && index(k, j) == b;
}

}  // namespace rankmixup::cuda
