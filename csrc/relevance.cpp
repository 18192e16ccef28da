// rankmixup::soft_relevance for every device without a kernel of its own, in ATen ops (and so
// for meta tensors under torch.compile too); the CPU has a one-pass kernel in cpu/mix.cpp.
#include <ATen/ATen.h>

#include "kernels.h"
#include "op_args.h"

namespace rankmixup {
// The operator kernels, registered in ops.cpp (declared in kernels.h).

at::Tensor soft_relevance_composite(const at::Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype) {
  check_soft_relevance_args(soft_targets, num_mix, dtype);
  const at::Tensor rel = soft_targets.amax(1).to(dtype).view({num_mix, soft_targets.size(0) / num_mix});
  return rel.masked_fill(rel.ge(1.0 - kSoftRelevanceOneTolerance), 1.0);
}

}  // namespace rankmixup
