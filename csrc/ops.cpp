// The operators: each one's schema and all its kernels, registered in one place (the kernels are
// declared in kernels.h and defined in cpu/, cuda/, relevance.cpp and autograd.cpp), and the
// Python module `_C`, whose import registers them.
#include <pybind11/pybind11.h>
#include <torch/extension.h>
#include <torch/headeronly/version.h>
#include <torch/library.h>

#include <string>
#include <string_view>

#include "cpu/row_ops.h"
#include "eager_loss.h"
#include "kernels.h"
#include "op_args.h"
#include "op_handles.h"
#include "python_call.h"

// A CUDA kernel's registration, in builds that compile them (setup.py / CMakeLists.txt define
// RANKMIXUP_WITH_CUDA then).
#ifdef RANKMIXUP_WITH_CUDA
#define RANKMIXUP_IF_CUDA(registration) registration
#else
#define RANKMIXUP_IF_CUDA(registration)
#endif

namespace {

// Filled in by the build (setup.py / CMakeLists.txt) when CUDA kernels are compiled.
#ifndef RANKMIXUP_CUDA_ARCH_LIST
#define RANKMIXUP_CUDA_ARCH_LIST ""
#endif

pybind11::dict build_info() {
  pybind11::dict info;
  pybind11::list backends;
  backends.append("cpu");
#ifdef RANKMIXUP_WITH_CUDA
  backends.append("cuda");
#endif
  info["backends"] = backends;
  info["cuda_arch_list"] = std::string(RANKMIXUP_CUDA_ARCH_LIST);
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_version"] = static_cast<int>(_OPENMP);
#else
  info["openmp"] = false;
  info["openmp_version"] = 0;
#endif
  info["torch_version"] = std::string(TORCH_VERSION);
#if defined(__clang__) || defined(__GNUC__)
  info["compiler"] = std::string(__VERSION__);
#endif
  info["cplusplus"] = static_cast<long>(__cplusplus);
  // Not the build's but this process's: AVX-512 packs or OpenMP-SIMD loops (cpu/row_ops.cpp).
  info["cpu_row_loops"] = std::string(rankmixup::cpu::uses_packed_rows() ? "avx512 packs" : "openmp simd");
  return info;
}

// _C.loss: the loss operator with the schema's arguments (with_parsed_options parses its options,
// call_with_options hands them back as schema arguments: both made from RANKMIXUP_LOSS_OPTIONS).
rankmixup::LossOutputs loss_called_directly(const at::Tensor& logits, const at::Tensor& mix_logits,
                                            const at::Tensor& targets, const at::Tensor& lam,
                                            const rankmixup::MixPartners& index, const rankmixup::ClassWeight& weight,
                                            const rankmixup::LossOptions& options) {
  return rankmixup::as_python_call([&] {
    return rankmixup::call_with_options(rankmixup::loss_op(), logits, mix_logits, targets, lam, index, weight,
                                        options);
  });
}

}  // namespace

// Every operator's schema and every kernel it has, one operator at a time: its CPU kernel, its
// CUDA kernel (when the build has them), its autograd (the Autograd alias key: every device).
// The loss kernels take the options as one LossOptions, parsed here, at the operator boundary.
TORCH_LIBRARY(rankmixup, m) {
  using c10::DispatchKey;
  const auto on = [](DispatchKey key, auto kernel) { return torch::dispatch(key, kernel); };
  // The loss schemas' option arguments, made from the one list of them (sample_loss.h).
  const std::string option_args = rankmixup::loss_option_schema_args();

  // Fused CE + rank loss (SPEC §5). lam (K, B), of any strides, in the accumulation dtype (float64
  // for float64 logits, else float32); with index int64 (K, B), the mixes' partners, each mix's
  // relevance (SPEC §3) is derived in the kernel: 1 where the partner's label is the sample's,
  // else max(lam, 1 - lam); with index None, lam holds the relevances themselves. Not
  // differentiable in lam. Besides the loss and its parts, returns what its backward needs: per
  // row of each sample's list (K+1, B), 5 coefficients (the row's max and the gradient's terms,
  // for grad_output = 1, reduction applied: pack_row) and the argmax.
  m.def(("loss(Tensor logits, Tensor mix_logits, Tensor targets, Tensor lam, Tensor? index, " + option_args +
         "Tensor? weight=None) -> (Tensor loss, Tensor ce, Tensor rank, Tensor row_coefs, Tensor row_argmax)")
            .c_str());
  m.impl("loss", on(DispatchKey::CPU, &rankmixup::with_parsed_options<&rankmixup::cpu::loss_cpu>));
  RANKMIXUP_IF_CUDA(m.impl("loss", on(DispatchKey::CUDA, &rankmixup::with_parsed_options<&rankmixup::cuda::loss_cuda>)));
  m.impl("loss", on(DispatchKey::Autograd, &rankmixup::with_parsed_options<&rankmixup::loss_autograd>));

  // The loss op's outputs and the gradients of the loss w.r.t. logits and mix_logits for
  // grad_output = 1 (contiguous, in the accumulation dtype), from the same read of the logits:
  // what autograd calls on devices whose kernels are bound by arithmetic rather than memory (the
  // CPU), its backward then only scaling them. Not differentiable itself.
  m.def(("loss_with_grad(Tensor logits, Tensor mix_logits, Tensor targets, Tensor lam, Tensor? index, " +
         option_args +
         "Tensor? weight=None) -> (Tensor loss, Tensor ce, Tensor rank, Tensor row_coefs, Tensor row_argmax, "
         "Tensor grad_logits, Tensor grad_mix_logits)")
            .c_str());
  m.impl("loss_with_grad", on(DispatchKey::CPU, &rankmixup::with_parsed_options<&rankmixup::cpu::loss_with_grad_cpu>));

  // The CPU backward after loss_with_grad: scales those gradients in place by grad_loss (a
  // scalar, or (B,) for reduction='none') and keeps the rows of ignored samples zero, whatever
  // grad_loss holds (0 * inf would be NaN there). A factor of exactly 1 leaves its rows as
  // loss_with_grad wrote them.
  m.def(
      "scale_grads_(Tensor(a!) grad_logits, Tensor(b!) grad_mix_logits, Tensor grad_loss, Tensor targets, "
      "int ignore_index) -> ()");
  m.impl("scale_grads_", on(DispatchKey::CPU, &rankmixup::cpu::scale_grads_cpu));

  // Gradient of loss w.r.t. logits and mix_logits, scaled by grad_loss (scalar, or (B,) for
  // reduction='none'); weight: the forward's class weights (a weighted raw row's constant term
  // is per class).
  m.def(
      "loss_backward(Tensor grad_loss, Tensor logits, Tensor mix_logits, Tensor targets, Tensor row_coefs, "
      "Tensor row_argmax, int ignore_index, Tensor? weight=None) -> (Tensor grad_logits, Tensor grad_mix_logits)");
  m.impl("loss_backward", on(DispatchKey::CPU, &rankmixup::cpu::loss_backward_cpu));
  RANKMIXUP_IF_CUDA(m.impl("loss_backward", on(DispatchKey::CUDA, &rankmixup::cuda::loss_backward_cuda)));

  // The relevance read off mixed soft targets (the drop-in classes' target_re), what `loss` then
  // takes as lam, without index: soft_targets (K*B, C) -> (K, B) in dtype (float32 or float64),
  // each row's largest entry, exactly 1 within 4 float32 epsilons of 1 (a same-class pair's
  // lam + (1 - lam)). Not differentiable. Devices without a kernel of their own (CUDA, meta) run
  // the ATen composite.
  m.def("soft_relevance(Tensor soft_targets, int num_mix, ScalarType dtype) -> Tensor");
  m.impl("soft_relevance", on(DispatchKey::CPU, &rankmixup::cpu::soft_relevance_cpu));
  m.impl("soft_relevance", on(DispatchKey::CompositeExplicitAutograd, &rankmixup::soft_relevance_composite));
  m.impl("soft_relevance", on(DispatchKey::Autograd, &rankmixup::soft_relevance_autograd));

  // Mixup (SPEC §2): x (B, *feat), lam (K, B) in x's accumulation dtype (float64 for float64 x,
  // else float32), index int64 (K, B) -> (K*B, *feat).
  m.def("mix(Tensor x, Tensor lam, Tensor index) -> Tensor");
  m.impl("mix", on(DispatchKey::CPU, &rankmixup::cpu::mix_cpu));
  RANKMIXUP_IF_CUDA(m.impl("mix", on(DispatchKey::CUDA, &rankmixup::cuda::mix_cuda)));
  m.impl("mix", on(DispatchKey::Autograd, &rankmixup::mix_autograd));

  // d mix / d x: grad (K*B, *feat) -> (B, *feat), gathered through the inverse permutation.
  // Differentiable in grad (its derivative is mix: double backward), not in lam.
  m.def("mix_backward(Tensor grad, Tensor lam, Tensor index) -> Tensor");
  m.impl("mix_backward", on(DispatchKey::CPU, &rankmixup::cpu::mix_backward_cpu));
  RANKMIXUP_IF_CUDA(m.impl("mix_backward", on(DispatchKey::CUDA, &rankmixup::cuda::mix_backward_cuda)));
  m.impl("mix_backward", on(DispatchKey::Autograd, &rankmixup::mix_backward_autograd));

  // CutMix (SPEC §2): x (B, C, H, W), boxes int64 (K, B, 4) as (top, bottom, left, right),
  // half-open, index int64 (K, B) -> (K*B, C, H, W), x[b] with the part of box (k, b) inside the
  // image taken from x[index[k, b]]; channels-last for channels-last x, else contiguous.
  m.def("paste_boxes(Tensor x, Tensor boxes, Tensor index) -> Tensor");
  m.impl("paste_boxes", on(DispatchKey::CPU, &rankmixup::cpu::paste_boxes_cpu));
  RANKMIXUP_IF_CUDA(m.impl("paste_boxes", on(DispatchKey::CUDA, &rankmixup::cuda::paste_boxes_cuda)));
  m.impl("paste_boxes", on(DispatchKey::Autograd, &rankmixup::paste_boxes_autograd));

  // d paste_boxes / d x: grad (K*B, C, H, W) -> (B, C, H, W), gathered through the inverse
  // permutation. Differentiable in grad (its derivative is paste_boxes: double backward).
  m.def("paste_boxes_backward(Tensor grad, Tensor boxes, Tensor index) -> Tensor");
  m.impl("paste_boxes_backward", on(DispatchKey::CPU, &rankmixup::cpu::paste_boxes_backward_cpu));
  RANKMIXUP_IF_CUDA(
      m.impl("paste_boxes_backward", on(DispatchKey::CUDA, &rankmixup::cuda::paste_boxes_backward_cuda)));
  m.impl("paste_boxes_backward", on(DispatchKey::Autograd, &rankmixup::paste_boxes_backward_autograd));
}

PYBIND11_MODULE(_C, m) {
  using at::Tensor;
  using rankmixup::as_python_call;
  m.doc() = "rankmixup_ops compiled extension: importing it registers the torch.ops.rankmixup operators";
  m.def("build_info", &build_info, "What this build of the extension contains.");
  // Direct entry points: the op called through the dispatcher as torch.ops.rankmixup.<op> calls
  // it, less that binding's boxing of every argument into a generic stack and back (2-3 us a
  // call here, 5-7 us when the caches are cold, as they are between a model's forward and
  // backward). They know nothing of __torch_function__, which the torch.ops binding honours, so
  // compiled.py calls them only where there is none to honour (plain tensors, eager mode, no
  // function mode).
  m.def("loss", &rankmixup::with_parsed_options<&loss_called_directly>, "torch.ops.rankmixup.loss, called directly.");
  m.def(
      "soft_relevance",
      [](const Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype) {
        return as_python_call([&] { return rankmixup::soft_relevance_op().call(soft_targets, num_mix, dtype); });
      },
      "torch.ops.rankmixup.soft_relevance, called directly.");
  m.def(
      "mix",
      [](const Tensor& x, const Tensor& lam, const Tensor& index) {
        return as_python_call([&] { return rankmixup::mix_op().call(x, lam, index); });
      },
      "torch.ops.rankmixup.mix, called directly.");
  m.def(
      "paste_boxes",
      [](const Tensor& x, const Tensor& boxes, const Tensor& index) {
        return as_python_call([&] { return rankmixup::paste_boxes_op().call(x, boxes, index); });
      },
      "torch.ops.rankmixup.paste_boxes, called directly.");
  // The loss's eager front ends (eager_loss.h).
  m.def("eager_loss", &rankmixup::eager_loss,
        "functional.loss_call for the common call, in one call, or None: see eager_loss.cpp.");
  m.def("eager_compat_loss", &rankmixup::eager_compat_loss,
        "The drop-in classes' forward for the common call (soft relevance and loss in one call), or None.");
}
