// rankmixup::relevance and rankmixup::soft_relevance for every device without a kernel of its
// own, in ATen ops (and so for meta tensors under torch.compile too); the CPU has one-pass
// kernels in cpu/mix.cpp.
#include <ATen/ATen.h>

#include "kernels.h"
#include "op_args.h"

namespace rankmixup {
// The operator kernels, registered in ops.cpp (declared in kernels.h).

at::Tensor relevance_composite(const at::Tensor& targets, const at::Tensor& lam, const at::Tensor& index) {
  check_relevance_args(targets, lam, index);
  const at::Tensor same = targets.index_select(0, index.reshape(-1)).view(index.sizes()).eq(targets.unsqueeze(0));
  return at::where(same, at::ones_like(lam, at::MemoryFormat::Contiguous), at::maximum(lam, at::rsub(lam, 1)));
}

at::Tensor soft_relevance_composite(const at::Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype) {
  check_soft_relevance_args(soft_targets, num_mix, dtype);
  const at::Tensor rel = soft_targets.amax(1).to(dtype).view({num_mix, soft_targets.size(0) / num_mix});
  return rel.masked_fill(rel.ge(1.0 - kSoftRelevanceOneTolerance), 1.0);
}

}  // namespace rankmixup
