// Argument checks and option parsing shared by every device's implementation of the ops in
// ops.cpp. The public Python API checks everything first (with friendlier messages); these
// guard direct torch.ops calls, so that no kernel ever reads out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "rankmixup/sample_loss.h"

namespace rankmixup {

// The dtype the kernels compute in for inputs of `dtype`, and so the dtype of the lam they take
// (mixing coefficients, or relevances where no index is given) and of soft_relevance's output:
// float64 for float64 inputs, float32 for every other floating dtype.
inline at::ScalarType accumulation_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// How a loss option of each C++ type travels as a schema argument: its schema type, the C++ type
// the dispatcher hands it as (Arg), and the conversions both ways. Numbers travel as they are;
// an enum as a str, one of its names (EnumOptionArg).
template <class T>
struct OptionArg {
  static_assert(std::is_same_v<T, double> || std::is_same_v<T, int64_t>, "an option is a number or an enum");
  using Arg = T;
  static constexpr std::string_view kSchemaType = std::is_same_v<T, double> ? "float" : "int";
  static T parse(Arg value, std::string_view /*name*/) { return value; }
  static Arg unparse(T value) { return value; }
};

// An enum option by the names of its values, in the enum's order.
template <class E, const auto& kNames>
struct EnumOptionArg {
  using Arg = std::string_view;
  static constexpr std::string_view kSchemaType = "str";
  static E parse(Arg value, std::string_view name) {
    for (size_t i = 0; i < std::size(kNames); ++i) {
      if (value == kNames[i]) return static_cast<E>(i);
    }
    std::string expected;  // 'a', 'b' or 'c'
    for (size_t i = 0; i < std::size(kNames); ++i) {
      expected.append(i == 0 ? "'" : i + 1 == std::size(kNames) ? " or '" : ", '").append(kNames[i]).append("'");
    }
    TORCH_CHECK(false, "rankmixup::loss: ", name, " must be ", expected, ", got '", value, "'");
  }
  static Arg unparse(E value) { return kNames[static_cast<size_t>(value)]; }
};

inline constexpr std::string_view kModeNames[] = {"mrl", "mndcg"};
inline constexpr std::string_view kScoreNames[] = {"logit", "prob"};
inline constexpr std::string_view kReductionNames[] = {"mean", "sum", "none"};
template <>
struct OptionArg<Mode> : EnumOptionArg<Mode, kModeNames> {};
template <>
struct OptionArg<Score> : EnumOptionArg<Score, kScoreNames> {};
template <>
struct OptionArg<Reduction> : EnumOptionArg<Reduction, kReductionNames> {};

// The loss operators' option arguments as their schemas (ops.cpp) hold them, between
// `Tensor? index` and `Tensor? weight`, each followed by ", ": "str mode, str score, float ...".
inline std::string loss_option_schema_args() {
  std::string args;
#define RANKMIXUP_OPTION_SCHEMA(type, name) args.append(OptionArg<type>::kSchemaType).append(" " #name ", ");
  RANKMIXUP_LOSS_OPTIONS(RANKMIXUP_OPTION_SCHEMA)
#undef RANKMIXUP_OPTION_SCHEMA
  return args;
}

// The number of options (the class weights come after them, in the schemas and in LossOptions).
#define RANKMIXUP_OPTION_COUNT(type, name) +1
inline constexpr size_t kLossOptionCount = 0 RANKMIXUP_LOSS_OPTIONS(RANKMIXUP_OPTION_COUNT);
#undef RANKMIXUP_OPTION_COUNT

// The options' argument types, each followed by a comma: for the loss operators' signatures
// (op_handles.h, which includes this header; so it stays defined).
#define RANKMIXUP_OPTION_ARG_TYPE(type, name) ::rankmixup::OptionArg<type>::Arg,

// The class weights of the loss operators (their last schema argument, Tensor? weight).
using ClassWeight = std::optional<at::Tensor>;

// The partners of the loss operators' mixes (their schema argument Tensor? index, after lam):
// with them, lam holds the mixing coefficients and the kernels derive each mix's relevance
// (pair_relevance, sample_loss.h); without, lam holds the relevances themselves (the drop-in
// classes read them off soft targets).
using MixPartners = std::optional<at::Tensor>;

// A loss kernel over (logits, mix_logits, targets, lam, index, weight, const LossOptions&) as the
// kernel of an operator with the loss schema's flat arguments, its options parsed into one
// value: what ops.cpp registers.
#define RANKMIXUP_OPTION_PARAM(type, name) OptionArg<type>::Arg name,
#define RANKMIXUP_OPTION_PARSE(type, name) OptionArg<type>::parse(name, #name),
template <auto kernel>
auto with_parsed_options(const at::Tensor& logits, const at::Tensor& mix_logits, const at::Tensor& targets,
                         const at::Tensor& lam, const MixPartners& index,
                         RANKMIXUP_LOSS_OPTIONS(RANKMIXUP_OPTION_PARAM) const ClassWeight& weight) {
  return kernel(logits, mix_logits, targets, lam, index, weight,
                LossOptions{RANKMIXUP_LOSS_OPTIONS(RANKMIXUP_OPTION_PARSE)});
}
#undef RANKMIXUP_OPTION_PARSE
#undef RANKMIXUP_OPTION_PARAM

// The other way: calls a loss operator (a typed handle of op_handles.h) with `options` as its
// schema arguments; what autograd.cpp redispatches with.
#define RANKMIXUP_OPTION_UNPARSE(type, name) OptionArg<type>::unparse(options.name),
template <class Op>
auto call_with_options(const Op& op, const at::Tensor& logits, const at::Tensor& mix_logits,
                       const at::Tensor& targets, const at::Tensor& lam, const MixPartners& index,
                       const ClassWeight& weight, const LossOptions& options) {
  return op.call(logits, mix_logits, targets, lam, index, RANKMIXUP_LOSS_OPTIONS(RANKMIXUP_OPTION_UNPARSE) weight);
}
#undef RANKMIXUP_OPTION_UNPARSE

// Class weights, when given, are contiguous (C,) in the logits' accumulation dtype on their device.
inline void check_class_weight(const char* op, const ClassWeight& weight, const at::Tensor& logits) {
  if (!weight.has_value()) return;
  TORCH_CHECK(weight->dim() == 1 && weight->size(0) == logits.size(1) && weight->is_contiguous() &&
                  weight->scalar_type() == accumulation_type(logits.scalar_type()),
              op, ": weight must be a contiguous (C,) tensor, float64 for float64 logits and float32 for the others");
  TORCH_CHECK(weight->device() == logits.device(), op, ": all tensors must be on one device");
}

// Shapes, dtypes and devices; the range of index's values is each kernel's to check (the CPU
// raises; a device kernel cannot without a host sync, and poisons the sample, NaN, as for a
// label outside [0, C)).
inline void check_loss_args(const at::Tensor& logits, const at::Tensor& mix_logits, const at::Tensor& targets,
                            const at::Tensor& lam, const MixPartners& index, const ClassWeight& weight) {
  TORCH_CHECK(logits.dim() == 2 && logits.numel() > 0, "rankmixup::loss: logits must be (B, C), non-empty");
  TORCH_CHECK(logits.is_floating_point(), "rankmixup::loss: logits must be floating point");
  // The CPU row loops index within a row in 32 bits (and across rows in 64).
  TORCH_CHECK(logits.size(1) <= std::numeric_limits<int32_t>::max(), "rankmixup::loss: more than 2^31 - 1 classes");
  const int64_t batch = logits.size(0);
  TORCH_CHECK(lam.dim() == 2 && lam.size(1) == batch && lam.size(0) >= 1 &&
                  lam.scalar_type() == accumulation_type(logits.scalar_type()),
              "rankmixup::loss: lam must be (K, B), float64 for float64 logits and float32 for the others");
  TORCH_CHECK(!index || (index->sizes() == lam.sizes() && index->scalar_type() == at::kLong),
              "rankmixup::loss: index must be int64 (K, B), as lam");
  TORCH_CHECK(mix_logits.dim() == 2 && mix_logits.size(0) == lam.size(0) * batch &&
                  mix_logits.size(1) == logits.size(1) && mix_logits.scalar_type() == logits.scalar_type(),
              "rankmixup::loss: mix_logits must be (K*B, C) with the dtype of logits");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == batch && targets.scalar_type() == at::kLong,
              "rankmixup::loss: targets must be int64 (B,)");
  for (const at::Tensor* t : {&mix_logits, &targets, &lam}) {
    TORCH_CHECK(t->device() == logits.device(), "rankmixup::loss: all tensors must be on one device");
  }
  TORCH_CHECK(!index || index->device() == logits.device(), "rankmixup::loss: all tensors must be on one device");
  check_class_weight("rankmixup::loss", weight, logits);
}

// The backward's inputs must be the forward's own (its row_coefs and row_argmax included).
inline void check_loss_backward_args(const at::Tensor& grad_loss, const at::Tensor& logits,
                                     const at::Tensor& mix_logits, const at::Tensor& targets, const at::Tensor& coefs,
                                     const at::Tensor& argmaxes, const ClassWeight& weight) {
  // The same shapes and dtypes as the forward checks: the kernels index mix rows with the
  // logits' C and a 2-D stride, so a mismatch here would read and write out of bounds.
  TORCH_CHECK(logits.dim() == 2 && logits.numel() > 0 && logits.is_floating_point(),
              "rankmixup::loss_backward: logits must be floating (B, C), non-empty");
  TORCH_CHECK(mix_logits.dim() == 2 && mix_logits.size(1) == logits.size(1) &&
                  mix_logits.scalar_type() == logits.scalar_type(),
              "rankmixup::loss_backward: mix_logits must be (K*B, C) with the dtype of logits");
  TORCH_CHECK(targets.dim() == 1 && targets.scalar_type() == at::kLong, "rankmixup::loss_backward: targets must be int64 (B,)");
  TORCH_CHECK(argmaxes.scalar_type() == at::kLong, "rankmixup::loss_backward: argmaxes must be the loss op's own output");
  const int64_t batch = logits.size(0);
  TORCH_CHECK(coefs.dim() == 3 && coefs.size(1) == batch && coefs.size(2) == kRowCoefs && coefs.is_contiguous() &&
                  argmaxes.sizes() == coefs.sizes().slice(0, 2) && argmaxes.is_contiguous(),
              "rankmixup::loss_backward: coefs/argmaxes must be the loss op's own outputs");
  TORCH_CHECK(mix_logits.size(0) == (coefs.size(0) - 1) * batch && targets.numel() == batch,
              "rankmixup::loss_backward: inputs do not match the forward's");
  TORCH_CHECK(grad_loss.numel() == 1 || grad_loss.numel() == batch,
              "rankmixup::loss_backward: grad_loss must be a scalar or (B,)");
  for (const at::Tensor* t : {&grad_loss, &mix_logits, &targets, &coefs, &argmaxes}) {
    TORCH_CHECK(t->device() == logits.device(), "rankmixup::loss_backward: all tensors must be on one device");
  }
  check_class_weight("rankmixup::loss_backward", weight, logits);
}

// The class weights' pointer for a kernel (null when unweighted); check_class_weight passed.
template <class acc_t>
const acc_t* class_weight_data(const ClassWeight& weight) {
  return weight.has_value() ? weight->const_data_ptr<acc_t>() : nullptr;
}

// scale_grads_ writes into its first two arguments: they must be the loss_with_grad outputs'
// shapes, contiguous, and of one floating dtype.
inline void check_scale_grads_args(const at::Tensor& grad_logits, const at::Tensor& grad_mix,
                                   const at::Tensor& grad_loss, const at::Tensor& targets) {
  TORCH_CHECK(grad_logits.dim() == 2 && grad_logits.is_contiguous() && grad_logits.is_floating_point(),
              "rankmixup::scale_grads_: grad_logits must be a contiguous floating (B, C)");
  const int64_t batch = grad_logits.size(0);
  TORCH_CHECK(grad_mix.dim() == 2 && grad_mix.is_contiguous() && grad_mix.size(1) == grad_logits.size(1) &&
                  batch > 0 && grad_mix.size(0) % batch == 0 && grad_mix.scalar_type() == grad_logits.scalar_type(),
              "rankmixup::scale_grads_: grad_mix_logits must be a contiguous (K*B, C) of grad_logits' dtype");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == batch && targets.scalar_type() == at::kLong,
              "rankmixup::scale_grads_: targets must be int64 (B,)");
  TORCH_CHECK(grad_loss.numel() == 1 || grad_loss.numel() == batch,
              "rankmixup::scale_grads_: grad_loss must be a scalar or (B,)");
  for (const at::Tensor* t : {&grad_mix, &grad_loss, &targets}) {
    TORCH_CHECK(t->device() == grad_logits.device(), "rankmixup::scale_grads_: all tensors must be on one device");
  }
}

inline void check_mix_args(const char* op, const at::Tensor& x, const at::Tensor& lam, const at::Tensor& index) {
  TORCH_CHECK(index.dim() == 2 && index.numel() > 0 && index.scalar_type() == at::kLong, op,
              ": index must be int64 (K, B), non-empty");
  TORCH_CHECK(x.is_floating_point(), op, ": x must be floating point");
  TORCH_CHECK(lam.sizes() == index.sizes() && lam.scalar_type() == accumulation_type(x.scalar_type()), op,
              ": lam must be (K, B), float64 for float64 x and float32 for the others");
  TORCH_CHECK(x.device() == lam.device() && x.device() == index.device(), op, ": all tensors must be on one device");
}

// CutMix: `images` (rows, C, H, W) floating, with rows = B for the forward's x and K*B for the
// backward's grad; boxes int64 (K, B, 4); index int64 (K, B).
inline void check_paste_boxes_args(const char* op, const at::Tensor& images, const at::Tensor& boxes,
                                   const at::Tensor& index, bool per_mix_rows) {
  TORCH_CHECK(index.dim() == 2 && index.numel() > 0 && index.scalar_type() == at::kLong, op,
              ": index must be int64 (K, B), non-empty");
  const int64_t num_mix = index.size(0), batch = index.size(1);
  TORCH_CHECK(images.dim() == 4 && images.is_floating_point() && images.size(0) == (per_mix_rows ? num_mix * batch : batch),
              op, per_mix_rows ? ": grad must be floating (K*B, C, H, W)" : ": x must be floating (B, C, H, W)");
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(0) == num_mix && boxes.size(1) == batch && boxes.size(2) == 4 &&
                  boxes.scalar_type() == at::kLong,
              op, ": boxes must be int64 (K, B, 4)");
  TORCH_CHECK(images.device() == boxes.device() && images.device() == index.device(), op,
              ": all tensors must be on one device");
}

// The layout of a CutMix result (and gradient) of `images`: channels-last when they are (and are
// not also contiguous, as when C = 1), else contiguous; rankmixup_ops/_types.py says the same.
inline at::MemoryFormat image_memory_format(const at::Tensor& images) {
  return images.is_contiguous(at::MemoryFormat::ChannelsLast) && !images.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                                          : at::MemoryFormat::Contiguous;
}

inline void check_soft_relevance_args(const at::Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype) {
  TORCH_CHECK(num_mix >= 1, "rankmixup::soft_relevance: num_mix must be >= 1, got ", num_mix);
  TORCH_CHECK(soft_targets.dim() == 2 && soft_targets.size(0) > 0 && soft_targets.size(1) > 0 &&
                  soft_targets.size(0) % num_mix == 0 && soft_targets.is_floating_point(),
              "rankmixup::soft_relevance: soft_targets must be floating (K*B, C), non-empty, with K = num_mix");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "rankmixup::soft_relevance: dtype must be float32 or float64");
}

// The relevance of a soft target row within float32 rounding of 1 (lam + (1 - lam) for a
// same-class pair) is exactly 1.
constexpr double kSoftRelevanceOneTolerance = 4.0 * 1.1920928955078125e-07;  // 4 float32 epsilons

}  // namespace rankmixup
