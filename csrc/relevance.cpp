// rankmixup::relevance for every device without a kernel of its own, in ATen ops (and so for
// meta tensors under torch.compile too); the CPU has a one-pass kernel in cpu/mix.cpp.
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

}  // namespace rankmixup
