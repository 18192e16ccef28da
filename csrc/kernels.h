// The kernel of every operator on every dispatch key, as ops.cpp registers them: the CPU ones
// (cpu/*.cpp), the CUDA ones (cuda/*.cu, built when RANKMIXUP_WITH_CUDA is defined), the ATen
// composite of soft_relevance for other devices (relevance.cpp) and the autograd ones
// (autograd.cpp). Each has its operator's schema signature (ops.cpp), except that the loss
// kernels take the options parsed into one LossOptions (ops.cpp registers them through
// with_parsed_options, op_args.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

#include "op_args.h"  // ClassWeight, MixPartners
#include "rankmixup/sample_loss.h"

namespace rankmixup {

using at::Tensor;
using LossKernelOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

namespace cpu {
LossKernelOutputs loss_cpu(const Tensor& logits, const Tensor& mix_logits, const Tensor& targets, const Tensor& lam,
                           const MixPartners& index, const ClassWeight& weight, const LossOptions& options);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> loss_with_grad_cpu(
    const Tensor& logits, const Tensor& mix_logits, const Tensor& targets, const Tensor& lam,
    const MixPartners& index, const ClassWeight& weight, const LossOptions& options);
void scale_grads_cpu(const Tensor& grad_logits, const Tensor& grad_mix, const Tensor& grad_loss,
                     const Tensor& targets, int64_t ignore_index);
std::tuple<Tensor, Tensor> loss_backward_cpu(const Tensor& grad_loss, const Tensor& logits, const Tensor& mix_logits,
                                             const Tensor& targets, const Tensor& coefs, const Tensor& argmaxes,
                                             int64_t ignore_index, const ClassWeight& weight);
Tensor soft_relevance_cpu(const Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype);
Tensor mix_cpu(const Tensor& x, const Tensor& lam, const Tensor& index);
Tensor mix_backward_cpu(const Tensor& grad, const Tensor& lam, const Tensor& index);
Tensor paste_boxes_cpu(const Tensor& x, const Tensor& boxes, const Tensor& index);
Tensor paste_boxes_backward_cpu(const Tensor& grad, const Tensor& boxes, const Tensor& index);
}  // namespace cpu

namespace cuda {
LossKernelOutputs loss_cuda(const Tensor& logits, const Tensor& mix_logits, const Tensor& targets, const Tensor& lam,
                            const MixPartners& index, const ClassWeight& weight, const LossOptions& options);
std::tuple<Tensor, Tensor> loss_backward_cuda(const Tensor& grad_loss, const Tensor& logits,
                                              const Tensor& mix_logits, const Tensor& targets, const Tensor& coefs,
                                              const Tensor& argmaxes, int64_t ignore_index, const ClassWeight& weight);
Tensor mix_cuda(const Tensor& x, const Tensor& lam, const Tensor& index);
Tensor mix_backward_cuda(const Tensor& grad, const Tensor& lam, const Tensor& index);
Tensor paste_boxes_cuda(const Tensor& x, const Tensor& boxes, const Tensor& index);
Tensor paste_boxes_backward_cuda(const Tensor& grad, const Tensor& boxes, const Tensor& index);
}  // namespace cuda

Tensor soft_relevance_composite(const Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype);

LossKernelOutputs loss_autograd(const Tensor& logits, const Tensor& mix_logits, const Tensor& targets,
                                const Tensor& lam, const MixPartners& index, const ClassWeight& weight,
                                const LossOptions& options);
Tensor soft_relevance_autograd(const Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype);
Tensor mix_autograd(const Tensor& x, const Tensor& lam, const Tensor& index);
Tensor mix_backward_autograd(const Tensor& grad, const Tensor& lam, const Tensor& index);
Tensor paste_boxes_autograd(const Tensor& x, const Tensor& boxes, const Tensor& index);
Tensor paste_boxes_backward_autograd(const Tensor& grad, const Tensor& boxes, const Tensor& index);

}  // namespace rankmixup
