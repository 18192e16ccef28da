// The pairing of mixes on the CPU, shared by mixup (mix.cpp) and CutMix (cutmix.cpp): index range
// checks, and the inverse permutation through which the backward kernels gather instead of
// scattering.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

#include "matrix.h"

namespace rankmixup::cpu {

inline void check_index_range(const char* op, const Matrix<int64_t>& index, int64_t num_mix, int64_t batch) {
  for (int64_t k = 0; k < num_mix; ++k) {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t j = index(k, b);
      TORCH_CHECK(j >= 0 && j < batch, op, ": index[", k, ", ", b, "] = ", j, " is outside [0, ", batch, ")");
    }
  }
}

// inverse[k * B + index[k, b]] = b; fails, naming `op`, unless every row of index is a permutation.
inline std::vector<int64_t> inverse_permutation(const char* op, const Matrix<int64_t>& index, int64_t num_mix,
                                                int64_t batch) {
  check_index_range(op, index, num_mix, batch);
  std::vector<int64_t> inverse(num_mix * batch, -1);
  for (int64_t k = 0; k < num_mix; ++k) {
    for (int64_t b = 0; b < batch; ++b) {
      int64_t& slot = inverse[k * batch + index(k, b)];
      TORCH_CHECK(slot < 0, op, ": row ", k, " of index is not a permutation");
      slot = b;
    }
  }
  return inverse;
}

}  // namespace rankmixup::cpu
