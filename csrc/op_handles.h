// Typed handles to the operators of ops.cpp, looked up in the dispatcher once. A call through
// one enters the dispatcher unboxed, at the first dispatch key that applies (autograd, autocast,
// a Python mode, then the device's kernel), as a torch.ops call does after boxing its Python
// arguments. autograd.cpp calls them below autograd; the module's direct entry points (ops.cpp)
// call them from Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

#include "op_args.h"

namespace rankmixup {

using LossOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LossWithGradOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The loss ops' signature, returning Out.
template <class Out>
using LossSignature = Out(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const std::optional<at::Tensor>&, RANKMIXUP_LOSS_OPTIONS(RANKMIXUP_OPTION_ARG_TYPE)
                          const std::optional<at::Tensor>&);

template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline const auto& loss_op() {
  static const auto op = typed_op<LossSignature<LossOutputs>>("rankmixup::loss");
  return op;
}

inline const auto& loss_with_grad_op() {
  static const auto op = typed_op<LossSignature<LossWithGradOutputs>>("rankmixup::loss_with_grad");
  return op;
}

inline const auto& scale_grads_op() {
  static const auto op = typed_op<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       int64_t)>("rankmixup::scale_grads_");
  return op;
}

inline const auto& loss_backward_op() {
  static const auto op =
      typed_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                  const std::optional<at::Tensor>&)>(
          "rankmixup::loss_backward");
  return op;
}

inline const auto& mix_op() {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("rankmixup::mix");
  return op;
}

inline const auto& mix_backward_op() {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("rankmixup::mix_backward");
  return op;
}

inline const auto& paste_boxes_op() {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("rankmixup::paste_boxes");
  return op;
}

inline const auto& paste_boxes_backward_op() {
  static const auto op = typed_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
      "rankmixup::paste_boxes_backward");
  return op;
}

inline const auto& soft_relevance_op() {
  static const auto op =
      typed_op<at::Tensor(const at::Tensor&, int64_t, at::ScalarType)>("rankmixup::soft_relevance");
  return op;
}

}  // namespace rankmixup
