// The per-sample RankMixup loss (SPEC §5) and its gradient (SPEC §6), from row statistics.
//
// A kernel owns one valid sample b: it computes RowStats of the raw row and of the K mix rows,
// calls sample_loss(), and — when gradients are wanted — writes each row's gradient as
//     d loss / d z_c = RowGrad::scale_p * softmax(z)_c + constant
//                      + at_max * [c == argmax] + at_target * [c == target],
// which covers CE (p - smoothed one-hot), the max-logit score (one-hot of the argmax) and the
// confidence score (conf * (onehot(argmax) - p)) with four numbers per row. With class weights
// w, the raw row's constant is constant * w_c (RowGrad::at's class_weight).
#pragma once

#include <cstdint>

#include "rankmixup/host_device.h"
#include "rankmixup/row_stats.h"

namespace rankmixup {

enum class Mode : int32_t { kMrl = 0, kMndcg = 1 };
enum class Score : int32_t { kLogit = 0, kProb = 1 };
enum class Reduction : int32_t { kMean = 0, kSum = 1, kNone = 2 };

// Every option of the loss operators, X(type, name) each, in the order of their schema arguments
// and of the fields of rankmixup_ops._types.LossOptions (but its last, the class weights: a
// tensor, which the kernels take beside the other tensors). The one list of them in C++: the
// fields of LossOptions below, and the operators' schema arguments, their parsing and their
// handles (op_args.h, op_handles.h) are made from it, so that an option is added here alone.
#define RANKMIXUP_LOSS_OPTIONS(X) \
  X(Mode, mode)                   \
  X(Score, score)                 \
  X(double, ce_weight)            \
  X(double, alpha)                \
  X(double, margin)               \
  X(int64_t, ignore_index)        \
  X(double, label_smoothing)      \
  X(Reduction, reduction)

// The options as one value: what the operators' flat schema arguments are parsed into once, at
// the operator boundary (op_args.h), and what every kernel takes.
struct LossOptions {
#define RANKMIXUP_OPTION_FIELD(type, name) type name;
  RANKMIXUP_LOSS_OPTIONS(RANKMIXUP_OPTION_FIELD)
#undef RANKMIXUP_OPTION_FIELD
};

// Whether the CE has a smoothing term (the only part that reads a row's logit sum).
RANKMIXUP_HD bool smooths_labels(const LossOptions& options) { return options.label_smoothing > 0.0; }

template <class T>
struct LossConfig {
  Mode mode;
  Score score;
  T margin;
  T label_smoothing;
  int64_t num_classes;
  T weight_ce;    // d total / d ce_b: ce_weight times the CE's reduction scale
  T weight_rank;  // d total / d rank_b: alpha times the rank term's reduction scale
  // Optional: discounts[p] = discount of list position p (1..K+1), computed once per call
  // rather than twice per mix and sample (a log2 each); null: computed where needed.
  const T* discounts = nullptr;
};

// The reduction 'mean' of each term: the CE divides by the summed class weights of the valid
// targets (their count when unweighted), as torch.nn.functional.cross_entropy does, the rank
// term by the count of valid samples; a mean over nothing (no valid sample, or weights summing
// to 0) is 0 with zero gradient, never NaN (SPEC §5).
RANKMIXUP_HD double mean_scale(double divisor) { return divisor != 0.0 ? 1.0 / divisor : 0.0; }

// The per-sample math's configuration for `options`, the weights of the two terms multiplied by
// their reduction scales (mean_scale of their divisors for 'mean', else 1).
template <class T>
RANKMIXUP_HD LossConfig<T> loss_config(const LossOptions& options, int64_t num_classes, double ce_scale,
                                       double rank_scale, const T* discounts = nullptr) {
  return {options.mode,
          options.score,
          static_cast<T>(options.margin),
          static_cast<T>(options.label_smoothing),
          num_classes,
          static_cast<T>(options.ce_weight * ce_scale),
          static_cast<T>(options.alpha * rank_scale),
          discounts};
}

// What the CE of a sample needs of its raw row besides the row's statistics: the target's logit
// and class weight, and the class weights' sum and weighted logit sum sum_c w_c z_c (for label
// smoothing). Unweighted, every weight is 1: weight 1, weight_sum C and the plain logit sum.
template <class T>
struct CeInputs {
  T z_target;
  T weight;
  T weight_sum;
  T weighted_logit_sum;
};

// The loss from its two parts (per sample, or reduced): ce_weight * ce + alpha * rank.
template <class T>
RANKMIXUP_HD T total_loss(const LossOptions& options, T ce, T rank) {
  return static_cast<T>(options.ce_weight) * ce + static_cast<T>(options.alpha) * rank;
}

template <class T>
struct RowGrad {
  T scale_p = T(0);
  T constant = T(0);
  T at_max = T(0);
  T at_target = T(0);
  int64_t argmax = 0;
  int64_t target = -1;  // -1: no target term (mix rows)

  // class_weight: w_c of a weighted raw row (its constant is per class), else 1.
  RANKMIXUP_HD T at(T softmax_c, int64_t c, T class_weight = T(1)) const {
    return scale_p * softmax_c + constant * class_weight + (c == argmax ? at_max : T(0)) +
           (c == target ? at_target : T(0));
  }

  // Chain rule through score(z): the max logit has gradient onehot(argmax); the confidence
  // conf * (onehot(argmax) - p).
  RANKMIXUP_HD void add_score(Score score, const RowStats<T>& s, T g) {
    if (score == Score::kLogit) {
      at_max += g;
    } else {
      const T gc = g * s.confidence();
      at_max += gc;
      scale_p -= gc;
    }
  }
};

template <class T>
struct SampleLoss {
  T ce;
  T rank;
};

template <class T>
RANKMIXUP_HD T score_of(Score score, const RowStats<T>& s) {
  return score == Score::kLogit ? s.max : s.confidence();
}

// Discount of list position p = 1, 2, ...: 1 / log2(p + 1).
template <class T>
RANKMIXUP_HD T discount(int64_t position) {
  return T(1) / log2_(T(position + 1));
}

template <class T>
RANKMIXUP_HD T discount(const LossConfig<T>& cfg, int64_t position) {
  return cfg.discounts ? cfg.discounts[position] : discount<T>(position);
}

// The relevance of a mix (SPEC §3) from its pairing: 1 where the partner's label is the sample's,
// else max(lam, 1 - lam), the largest entry of the mixed soft target (NaN for a NaN lam).
template <class T>
RANKMIXUP_HD T pair_relevance(T lam, int64_t target, int64_t partner_target) {
  return partner_target == target ? T(1) : (lam > T(1) - lam ? lam : T(1) - lam);
}

// Position (2..K+1) of mix k in the M-NDCG list: after the raw sample, mixes sorted by
// relevance descending, ties by k ascending — i.e. a stable sort, without any scratch space.
template <class R>
RANKMIXUP_HD int64_t mndcg_position(const R* rel, int64_t rel_stride, int64_t num_mix, int64_t k) {
  const R rk = rel[k * rel_stride];
  int64_t before = 0;
  for (int64_t j = 0; j < num_mix; ++j) {
    const R rj = rel[j * rel_stride];
    before += (rj > rk || (rj == rk && j < k)) ? 1 : 0;
  }
  return 2 + before;
}

// The loss of one valid sample and, if `grads` is not null, the RowGrad of its K+1 rows
// (grads[0] the raw row, grads[1 + k] mix k).
//   raw, ce_in: statistics of the raw row, and what its CE needs besides
//   mix[k]: statistics of mix row k; rel[k * rel_stride]: its relevance (SPEC §3)
template <class T, class R>
RANKMIXUP_HD SampleLoss<T> sample_loss(const LossConfig<T>& cfg, const RowStats<T>& raw, const CeInputs<T>& ce_in,
                                       int64_t target, const RowStats<T>* mix, const R* rel, int64_t rel_stride,
                                       int64_t num_mix, RowGrad<T>* grads) {
  const T ls = cfg.label_smoothing;
  const T classes = T(cfg.num_classes);
  // Weighted cross-entropy with label smoothing, as torch.nn.functional.cross_entropy defines
  // it: w_y (1 - ls) (lse - z_y) + (ls / C) sum_c w_c (lse - z_c), written with differences from
  // the max so that its error scales with the CE, not with the logits. The smoothing term only
  // where there is smoothing: a class masked with a -inf logit would make it 0 * inf.
  const T target_share = ce_in.weight * (T(1) - ls);
  const T lse_weight = target_share + ls * (ce_in.weight_sum / classes);  // unweighted: 1
  T ce = lse_weight * log_(raw.sumexp) + target_share * (raw.max - ce_in.z_target);
  if (ls > T(0)) ce += ls * (raw.max * (ce_in.weight_sum / classes) - ce_in.weighted_logit_sum / classes);
  if (grads) {
    for (int64_t r = 0; r <= num_mix; ++r) {
      grads[r] = RowGrad<T>{};
      grads[r].argmax = r == 0 ? raw.argmax : mix[r - 1].argmax;
    }
    grads[0].scale_p = cfg.weight_ce * lse_weight;
    grads[0].constant = -cfg.weight_ce * (ls / classes);  // times w_c, when weighted
    grads[0].at_target = -cfg.weight_ce * target_share;
    grads[0].target = target;
  }

  T rank = T(0);
  if (cfg.mode == Mode::kMrl) {
    const T inv_k = T(1) / T(num_mix);
    const T s_raw = score_of(cfg.score, raw);
    T g_raw = T(0);
    for (int64_t k = 0; k < num_mix; ++k) {
      if (!(T(rel[k * rel_stride]) < T(1))) continue;  // keep = rel < 1 (SPEC §3)
      const T hinge = score_of(cfg.score, mix[k]) - s_raw + cfg.margin;
      rank += relu_nan(hinge);
      if (grads && hinge > T(0)) {  // relu'(0) = 0
        grads[1 + k].add_score(cfg.score, mix[k], cfg.weight_rank * inv_k);
        g_raw -= cfg.weight_rank * inv_k;
      }
    }
    rank *= inv_k;
    if (grads) grads[0].add_score(cfg.score, raw, g_raw);
  } else {
    // M-NDCG over [raw, mixes by relevance]: D = sum gain_p d_p, I = sum rel_p d_p.
    const T d1 = discount(cfg, 1);
    T dcg = raw.confidence() * d1;
    T idcg = d1;
    for (int64_t k = 0; k < num_mix; ++k) {
      const T d = discount(cfg, mndcg_position(rel, rel_stride, num_mix, k));
      dcg += mix[k].confidence() * d;
      idcg += T(rel[k * rel_stride]) * d;
    }
    const bool below = idcg > dcg;
    rank = T(1) - (below ? dcg / idcg : idcg / dcg);
    if (grads) {
      // d rank / d gain_p = -d_p / I when I > D, else I d_p / D^2.
      const T per_discount = below ? -T(1) / idcg : idcg / (dcg * dcg);
      grads[0].add_score(Score::kProb, raw, cfg.weight_rank * per_discount * d1);
      for (int64_t k = 0; k < num_mix; ++k) {
        const T d = discount(cfg, mndcg_position(rel, rel_stride, num_mix, k));
        grads[1 + k].add_score(Score::kProb, mix[k], cfg.weight_rank * per_discount * d);
      }
    }
  }
  return {ce, rank};
}

// What a backward pass needs of one row: its RowGrad (for grad_output = 1) and its max, as
// kRowCoefs numbers (the loss op's row_coefs output), plus the argmax stored beside them. The
// softmax coefficient is stored per exp(z - max), scale_p / sumexp: the backward then takes
// exp(z - max), as the forward did, and not exp(z - lse), whose float lse is off by about
// eps * |lse| (2.4e-4 at logits near 2000 in float32), and so is every p of the row.
constexpr int64_t kRowCoefs = 5;

template <class T>
RANKMIXUP_HD void pack_row(const RowGrad<T>& g, const RowStats<T>& stats, T* out) {
  out[0] = stats.max;
  out[1] = g.scale_p / stats.sumexp;
  out[2] = g.constant;
  out[3] = g.at_max;
  out[4] = g.at_target;
}

// The row of an ignored sample: every coefficient 0, so that its gradient is exactly 0.
template <class T>
RANKMIXUP_HD void pack_ignored_row(T* out) {
  for (int64_t i = 0; i < kRowCoefs; ++i) out[i] = T(0);
}

// The packed row's RowGrad scaled by grad_output, and the row's max: the gradient of column c
// is at(exp(z_c - max), c, ...), its scale_p being per exp(z - max) (see pack_row).
template <class T>
RANKMIXUP_HD RowGrad<T> unpack_row(const T* in, int64_t argmax, int64_t target, T grad_output, T* max) {
  *max = in[0];
  RowGrad<T> g;
  g.scale_p = grad_output * in[1];
  g.constant = grad_output * in[2];
  g.at_max = grad_output * in[3];
  g.at_target = grad_output * in[4];
  g.argmax = argmax;
  g.target = target;
  return g;
}

}  // namespace rankmixup
