// Argument checks and option parsing shared by every device's implementation of the ops in
// ops.cpp. The public Python API checks everything first (with friendlier messages); these
// guard direct torch.ops calls, so that no kernel ever reads out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string_view>

#include "rankmixup/sample_loss.h"

namespace rankmixup {

enum class Reduction { kMean, kSum, kNone };

struct LossOptions {
  Mode mode;
  Score score;
  Reduction reduction;
};

inline LossOptions parse_loss_options(std::string_view mode, std::string_view score, std::string_view reduction) {
  TORCH_CHECK(mode == "mrl" || mode == "mndcg", "rankmixup::loss: mode must be 'mrl' or 'mndcg', got '", mode, "'");
  TORCH_CHECK(score == "logit" || score == "prob", "rankmixup::loss: score must be 'logit' or 'prob', got '", score,
              "'");
  TORCH_CHECK(reduction == "mean" || reduction == "sum" || reduction == "none",
              "rankmixup::loss: reduction must be 'mean', 'sum' or 'none', got '", reduction, "'");
  return {mode == "mrl" ? Mode::kMrl : Mode::kMndcg, score == "logit" ? Score::kLogit : Score::kProb,
          reduction == "mean" ? Reduction::kMean : (reduction == "sum" ? Reduction::kSum : Reduction::kNone)};
}

inline void check_loss_args(const at::Tensor& logits, const at::Tensor& mix_logits, const at::Tensor& targets,
                            const at::Tensor& rel) {
  TORCH_CHECK(logits.dim() == 2 && logits.numel() > 0, "rankmixup::loss: logits must be (B, C), non-empty");
  TORCH_CHECK(logits.is_floating_point(), "rankmixup::loss: logits must be floating point");
  const int64_t batch = logits.size(0);
  TORCH_CHECK(rel.dim() == 2 && rel.size(1) == batch && rel.size(0) >= 1 && rel.scalar_type() == at::kFloat,
              "rankmixup::loss: rel must be float32 (K, B)");
  TORCH_CHECK(mix_logits.dim() == 2 && mix_logits.size(0) == rel.size(0) * batch &&
                  mix_logits.size(1) == logits.size(1) && mix_logits.scalar_type() == logits.scalar_type(),
              "rankmixup::loss: mix_logits must be (K*B, C) with the dtype of logits");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == batch && targets.scalar_type() == at::kLong,
              "rankmixup::loss: targets must be int64 (B,)");
  for (const at::Tensor* t : {&mix_logits, &targets, &rel}) {
    TORCH_CHECK(t->device() == logits.device(), "rankmixup::loss: all tensors must be on one device");
  }
}

inline void check_mix_args(const char* op, const at::Tensor& x, const at::Tensor& lam, const at::Tensor& index) {
  TORCH_CHECK(index.dim() == 2 && index.numel() > 0 && index.scalar_type() == at::kLong, op,
              ": index must be int64 (K, B), non-empty");
  TORCH_CHECK(lam.sizes() == index.sizes() && lam.scalar_type() == at::kFloat, op, ": lam must be float32 (K, B)");
  TORCH_CHECK(x.is_floating_point(), op, ": x must be floating point");
  TORCH_CHECK(x.device() == lam.device() && x.device() == index.device(), op, ": all tensors must be on one device");
}

}  // namespace rankmixup
