// Fused RankMixup loss on the CPU: one task per sample over its K+1 rows, parallel over
// samples, vectorised over classes (over 16 samples at a time where rows have at most 16
// classes). The forward reads each row once and keeps, per row, the few numbers its gradient
// needs. Autograd calls loss_with_grad, which also writes each row's gradient from the exps of
// that same read (the CPU is bound by the exp, one per logit, not by memory); the backward op,
// which reads each row once more, serves calls that need it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/pairing.h"
#include "kernels.h"
#include "op_args.h"
#include "rankmixup/sample_loss.h"
#include "row_ops.h"
#include "strided_rows.h"

namespace rankmixup::cpu {
namespace {

using at::Tensor;

// Logits per parallel chunk below which splitting the batch costs more than it saves: for the
// loss kernels (an exp per logit, and per row a few reductions that dominate at small C; two
// threads already pay at B=128, K=1, C=10 on the 2-core machine), and for the in-place scaling
// (a multiply per logit).
constexpr int64_t kGrainElements = 1 << 11;
constexpr int64_t kScaleGrainElements = 1 << 15;

template <class acc_t>
struct PerSample {
  std::vector<acc_t> ce, rank;
  explicit PerSample(int64_t batch) : ce(batch, acc_t(0)), rank(batch, acc_t(0)) {}
};

// The valid samples' count, and their targets' summed class weights when `weight` is not null:
// the divisors of the mean (sample_loss.h). Checks that every valid label indexes a class: an
// out-of-range label would make the kernel read outside its row.
struct ValidTargets {
  int64_t count = 0;
  double weight_sum = 0;  // summed in double in sample order: deterministic
};

template <class acc_t>
ValidTargets valid_targets(const Tensor& targets, int64_t num_classes, int64_t ignore_index, const acc_t* weight) {
  const Tensor t = targets.contiguous();
  const int64_t* y = t.const_data_ptr<int64_t>();
  ValidTargets valid;
  for (int64_t b = 0; b < t.numel(); ++b) {
    if (y[b] == ignore_index) continue;
    TORCH_CHECK(y[b] >= 0 && y[b] < num_classes, "rankmixup::loss: target ", y[b], " of sample ", b,
                " is outside [0, ", num_classes, ") and is not ignore_index=", ignore_index);
    ++valid.count;
    if (weight) valid.weight_sum += weight[y[b]];
  }
  return valid;
}

// The class weights of a weighted loss, as its kernels read them.
template <class acc_t>
struct ClassWeights {
  const acc_t* data = nullptr;  // null: unweighted
  acc_t sum = acc_t(0);         // sum_c w_c
};

// sum_c w_c z_c over a row: the smoothing term of a weighted CE.
template <class T>
T weighted_sum(const T* z, const T* w, int64_t n) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < n; ++c) sum += w[c] * z[c];
  return sum;
}

// row[c] += constant * w_c: a weighted raw row's constant term, which is per class (the row
// loops of row_ops.h write rows with one constant, here 0).
template <class T>
void add_class_constant(T* row, int64_t n, T constant, const T* w) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) row[c] += constant * w[c];
}

// A raw row's gradient terms for the row loops, and the per-class constant they leave out
// (0 unless the loss is weighted).
template <class T>
RowGrad<T> without_class_constant(RowGrad<T> g, bool weighted, T* class_constant) {
  *class_constant = weighted ? g.constant : T(0);
  if (weighted) g.constant = T(0);
  return g;
}

// Each sample's K relevances (SPEC §3), as its loss reads them: derived from lam and the
// partners' labels, or, without partners, lam itself (see MixPartners, op_args.h).
template <class acc_t>
struct Relevances {
  Matrix<acc_t> lam;
  std::optional<Matrix<int64_t>> index;
  const int64_t* y;
  int64_t y_stride;

  // rel[k] for sample b, whose label is `target`.
  void of_sample(int64_t b, int64_t target, int64_t num_mix, acc_t* rel) const {
    for (int64_t k = 0; k < num_mix; ++k) {
      rel[k] = index ? pair_relevance(lam(k, b), target, y[(*index)(k, b) * y_stride]) : lam(k, b);
    }
  }
};

// Where the forward writes the gradient rows (grad_output = 1), when it is asked to: the
// (B, C) and (K*B, C) contiguous gradients of logits and mix_logits, in the accumulation type
// (the backward's scaling then rounds a narrower dtype once, not twice).
template <class acc_t>
struct GradOut {
  acc_t* raw = nullptr;
  acc_t* mix = nullptr;
  bool wanted() const { return raw != nullptr; }
};

template <class scalar_t>
void loss_kernel(const Tensor& logits, const Tensor& mix_logits, const Tensor& targets,
                 const Relevances<at::opmath_type<scalar_t>>& relevances,
                 const LossConfig<at::opmath_type<scalar_t>>& cfg, int64_t ignore_index, bool smoothing,
                 const ClassWeights<at::opmath_type<scalar_t>>& weights, PerSample<at::opmath_type<scalar_t>>& out,
                 Tensor& coefs, Tensor& argmaxes, GradOut<at::opmath_type<scalar_t>> grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = logits.size(0);
  const int64_t num_classes = logits.size(1);
  const int64_t num_mix = mix_logits.size(0) / batch;
  const StridedRows<scalar_t> raw_rows(logits), mix_rows(mix_logits);
  const int64_t* y = targets.const_data_ptr<int64_t>();
  acc_t* coef = coefs.data_ptr<acc_t>();
  int64_t* argmax = argmaxes.data_ptr<int64_t>();

  // Rows of at most kBlockRows columns are scanned a block of samples at a time, in every layout
  // and float dtype alike (so that the layout never changes the arithmetic); float64 rows and
  // longer ones, one by one.
  constexpr bool kFloatRows = std::is_same_v<acc_t, float>;
  const bool by_block = kFloatRows && num_classes <= kBlockRows;
  const bool weighted = weights.data != nullptr;
  // The weighted logit sum only where the smoothing term reads it (and 0 * -inf cannot reach it).
  const bool weighted_smoothing = weighted && smoothing;

  at::parallel_for(0, batch, std::max<int64_t>(1, kGrainElements / ((num_mix + 1) * num_classes)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(raw_rows.needs_scratch() || mix_rows.needs_scratch() ? num_classes : 0);
    std::vector<RowStats<acc_t>> stats(num_mix + 1);
    std::vector<RowGrad<acc_t>> grads(num_mix + 1);
    std::vector<acc_t> rel(num_mix);
    // By block: list entry r of sample first + i scanned at r * kBlockRows + i.
    std::vector<RowScan<acc_t>> block_scans(by_block ? (num_mix + 1) * kBlockRows : 0);
    std::vector<acc_t> block_scratch(by_block ? kBlockRows * num_classes : 0);
    // List entry r of sample b: its gradient row, which first holds its exps (null: no gradient).
    // The rows of consecutive samples follow each other.
    const auto grad_row = [&](int64_t b, int64_t r) -> acc_t* {
      if (!grad.wanted()) return nullptr;
      return r == 0 ? grad.raw + b * num_classes : grad.mix + ((r - 1) * batch + b) * num_classes;
    };
    // The logits scanned after row r of sample b, where they can be prefetched (else null).
    const auto next_row = [&](int64_t b, int64_t r) -> const acc_t* {
      if (r < num_mix) return mix_rows.in_place(r * batch + b);
      return b + 1 < end ? raw_rows.in_place(b + 1) : nullptr;
    };
    for (int64_t first = begin; first < end; first += kBlockRows) {
      const int64_t last = std::min(end, first + kBlockRows);
      if constexpr (kFloatRows) {
        if (by_block) {
          const int64_t rows = last - first;
          scan_row_block(raw_rows.packed_rows(first, rows, block_scratch.data()), rows, num_classes,
                         grad_row(first, 0), block_scans.data());
          for (int64_t k = 0; k < num_mix; ++k) {
            scan_row_block(mix_rows.packed_rows(k * batch + first, rows, block_scratch.data()), rows, num_classes,
                           grad_row(first, 1 + k), block_scans.data() + (1 + k) * kBlockRows);
          }
        }
      }
      for (int64_t b = first; b < last; ++b) {
        const int64_t target = y[b * targets.stride(0)];
        if (target == ignore_index) {  // whatever was scanned, its gradient is exactly 0
          for (int64_t r = 0; r <= num_mix; ++r) {
            pack_ignored_row(coef + (r * batch + b) * kRowCoefs);
            argmax[r * batch + b] = 0;
            if (grad.wanted()) std::fill_n(grad_row(b, r), num_classes, acc_t(0));
          }
          continue;
        }
        RowScan<acc_t> raw;
        acc_t z_target, weighted_logit_sum = acc_t(0);
        if (by_block) {
          raw = block_scans[b - first];
          z_target = raw_rows.at(b, target);
          if (weighted_smoothing) {
            weighted_logit_sum = weighted_sum(raw_rows.row(b, scratch.data()), weights.data, num_classes);
          }
          for (int64_t k = 0; k < num_mix; ++k) stats[1 + k] = block_scans[(1 + k) * kBlockRows + b - first].stats;
        } else {
          const acc_t* z = raw_rows.row(b, scratch.data());
          z_target = z[target];  // read before the mix rows reuse the scratch row
          if (weighted_smoothing) weighted_logit_sum = weighted_sum(z, weights.data, num_classes);
          raw = scan_row(z, num_classes, grad_row(b, 0), next_row(b, 0));
          for (int64_t k = 0; k < num_mix; ++k) {
            stats[1 + k] = scan_row(mix_rows.row(k * batch + b, scratch.data()), num_classes, grad_row(b, 1 + k),
                                    next_row(b, 1 + k)).stats;
          }
        }
        stats[0] = raw.stats;
        relevances.of_sample(b, target, num_mix, rel.data());
        const CeInputs<acc_t> ce_in =
            weighted ? CeInputs<acc_t>{z_target, weights.data[target], weights.sum, weighted_logit_sum}
                     : CeInputs<acc_t>{z_target, acc_t(1), static_cast<acc_t>(num_classes), raw.sum};
        const SampleLoss<acc_t> loss =
            sample_loss(cfg, raw.stats, ce_in, target, stats.data() + 1, rel.data(), 1, num_mix, grads.data());
        out.ce[b] = loss.ce;
        out.rank[b] = loss.rank;
        for (int64_t r = 0; r <= num_mix; ++r) {
          pack_row(grads[r], stats[r], coef + (r * batch + b) * kRowCoefs);
          argmax[r * batch + b] = stats[r].argmax;
          if (acc_t* row = grad_row(b, r)) {
            acc_t class_constant;
            finish_grad_row(row, num_classes, stats[r],
                            without_class_constant(grads[r], weighted && r == 0, &class_constant), row);
            if (class_constant != acc_t(0)) add_class_constant(row, num_classes, class_constant, weights.data);
          }
        }
      }
    }
  });
}

// The loss op, and with `with_grad` also the gradients of logits and mix_logits for
// grad_output = 1 (see loss_with_grad in ops.cpp).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> loss_forward(
    const Tensor& logits, const Tensor& mix_logits, const Tensor& targets, const Tensor& lam,
    const MixPartners& index, const ClassWeight& weight, const LossOptions& options, bool with_grad) {
  check_loss_args(logits, mix_logits, targets, lam, index, weight);
  const int64_t batch = logits.size(0);
  const int64_t num_classes = logits.size(1);
  const int64_t num_mix = lam.size(0);
  std::optional<Matrix<int64_t>> partners;
  if (index) {
    partners.emplace(*index);
    check_index_range("rankmixup::loss", *partners, num_mix, batch);
  }
  const bool mean = options.reduction == Reduction::kMean;

  const auto acc_options = logits.options().dtype(accumulation_type(logits.scalar_type()));
  Tensor coefs = at::empty({num_mix + 1, batch, kRowCoefs}, acc_options);
  Tensor argmaxes = at::empty({num_mix + 1, batch}, logits.options().dtype(at::kLong));
  Tensor grad_logits, grad_mix;
  if (with_grad) {
    const auto grad_options = acc_options.memory_format(at::MemoryFormat::Contiguous);
    grad_logits = at::empty(logits.sizes(), grad_options);
    grad_mix = at::empty(mix_logits.sizes(), grad_options);
  }
  const bool per_sample = options.reduction == Reduction::kNone;
  Tensor loss = at::empty(per_sample ? at::IntArrayRef{batch} : at::IntArrayRef{}, acc_options);
  Tensor ce = at::empty_like(loss);
  Tensor rank = at::empty_like(loss);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "rankmixup_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> discounts(num_mix + 2);
    for (int64_t position = 1; position <= num_mix + 1; ++position) discounts[position] = discount<acc_t>(position);
    ClassWeights<acc_t> weights;
    weights.data = class_weight_data<acc_t>(weight);
    if (weights.data) weights.sum = static_cast<acc_t>(std::accumulate(weights.data, weights.data + num_classes, 0.0));
    const ValidTargets valid = valid_targets(targets, num_classes, options.ignore_index, weights.data);
    const double ce_scale = mean ? mean_scale(weights.data ? valid.weight_sum : static_cast<double>(valid.count)) : 1.0;
    const double rank_scale = mean ? mean_scale(static_cast<double>(valid.count)) : 1.0;
    const LossConfig<acc_t> cfg = loss_config<acc_t>(options, num_classes, ce_scale, rank_scale, discounts.data());
    PerSample<acc_t> per(batch);
    GradOut<acc_t> grad;
    if (with_grad) grad = {grad_logits.data_ptr<acc_t>(), grad_mix.data_ptr<acc_t>()};
    const Relevances<acc_t> relevances{Matrix<acc_t>(lam), partners, targets.const_data_ptr<int64_t>(),
                                       targets.stride(0)};
    loss_kernel<scalar_t>(logits, mix_logits, targets, relevances, cfg, options.ignore_index,
                          smooths_labels(options), weights, per, coefs, argmaxes, grad);

    acc_t* loss_out = loss.data_ptr<acc_t>();
    acc_t* ce_out = ce.data_ptr<acc_t>();
    acc_t* rank_out = rank.data_ptr<acc_t>();
    if (per_sample) {
      std::copy(per.ce.begin(), per.ce.end(), ce_out);
      std::copy(per.rank.begin(), per.rank.end(), rank_out);
      for (int64_t b = 0; b < batch; ++b) loss_out[b] = total_loss(options, per.ce[b], per.rank[b]);
    } else {
      // Summed in double in sample order: deterministic, and no less exact than torch.sum.
      double ce_sum = 0, rank_sum = 0;
      for (int64_t b = 0; b < batch; ++b) {
        ce_sum += per.ce[b];
        rank_sum += per.rank[b];
      }
      *ce_out = static_cast<acc_t>(ce_sum * ce_scale);
      *rank_out = static_cast<acc_t>(rank_sum * rank_scale);
      *loss_out = total_loss(options, *ce_out, *rank_out);
    }
  });
  return {loss, ce, rank, coefs, argmaxes, grad_logits, grad_mix};
}

// Backward: re-reads each valid row once and writes grad_output * RowGrad(softmax) — the
// forward kept only K+1 small records per sample, so no gradient-sized buffer lives between
// the passes. Ignored samples get rows of exact zeros.
template <class scalar_t>
void loss_backward_kernel(const Tensor& grad_loss, const Tensor& logits, const Tensor& mix_logits,
                          const Tensor& targets, const Tensor& coefs, const Tensor& argmaxes, int64_t ignore_index,
                          const ClassWeight& weight, Tensor& grad_logits, Tensor& grad_mix) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* class_weights = class_weight_data<acc_t>(weight);
  const int64_t batch = logits.size(0), num_classes = logits.size(1), num_mix = coefs.size(0) - 1;
  const StridedRows<scalar_t> raw_rows(logits), mix_rows(mix_logits);
  const int64_t* y = targets.const_data_ptr<int64_t>();
  const acc_t* g = grad_loss.const_data_ptr<acc_t>();
  const bool per_sample = grad_loss.numel() != 1;
  const acc_t* coef = coefs.const_data_ptr<acc_t>();
  const int64_t* argmax = argmaxes.const_data_ptr<int64_t>();
  scalar_t* out_raw = grad_logits.data_ptr<scalar_t>();
  scalar_t* out_mix = grad_mix.data_ptr<scalar_t>();

  at::parallel_for(0, batch, std::max<int64_t>(1, kGrainElements / ((num_mix + 1) * num_classes)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(raw_rows.needs_scratch() || mix_rows.needs_scratch() ? num_classes : 0);
    std::vector<acc_t> grad_scratch(std::is_same_v<scalar_t, acc_t> ? 0 : num_classes);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t target = y[b * targets.stride(0)];
      for (int64_t r = 0; r <= num_mix; ++r) {
        scalar_t* out = r == 0 ? out_raw + b * num_classes : out_mix + ((r - 1) * batch + b) * num_classes;
        if (target == ignore_index) {
          std::fill_n(out, num_classes, scalar_t(0));
          continue;
        }
        acc_t row_max, class_constant;
        const RowGrad<acc_t> row_grad = without_class_constant(
            unpack_row(coef + (r * batch + b) * kRowCoefs, argmax[r * batch + b], r == 0 ? target : -1,
                       g[per_sample ? b : 0], &row_max),
            class_weights != nullptr && r == 0, &class_constant);
        const acc_t* z = r == 0 ? raw_rows.row(b, scratch.data()) : mix_rows.row((r - 1) * batch + b, scratch.data());
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          write_grad_row(z, num_classes, row_max, row_grad, out);
          if (class_constant != acc_t(0)) add_class_constant(out, num_classes, class_constant, class_weights);
        } else {
          write_grad_row(z, num_classes, row_max, row_grad, grad_scratch.data());
          if (class_constant != acc_t(0)) {
            add_class_constant(grad_scratch.data(), num_classes, class_constant, class_weights);
          }
          // One rounding to scalar_t (bfloat16: a vectorised loop of the same rounding).
          if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
            narrow_to_bfloat16_row(grad_scratch.data(), num_classes, reinterpret_cast<uint16_t*>(out));
          } else {
            std::copy_n(grad_scratch.data(), num_classes, out);
          }
        }
      }
    }
  });
}

// The row kernels write at the argmax and the target of a row: a direct call with forged
// row_argmax or targets would write outside it. (CUDA compares every column with them instead.)
void check_backward_columns(const Tensor& targets, const Tensor& argmaxes, int64_t num_classes, int64_t ignore_index) {
  const int64_t* argmax = argmaxes.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < argmaxes.numel(); ++i) {
    TORCH_CHECK(argmax[i] >= 0 && argmax[i] < num_classes,
                "rankmixup::loss_backward: row_argmax must be the loss op's own output (", argmax[i],
                " is not a column)");
  }
  const Tensor t = targets.contiguous();
  const int64_t* y = t.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < t.numel(); ++b) {
    TORCH_CHECK(y[b] == ignore_index || (y[b] >= 0 && y[b] < num_classes), "rankmixup::loss_backward: target ",
                y[b], " of sample ", b, " is outside [0, ", num_classes, ") and is not ignore_index=", ignore_index);
  }
}

// (Out of the dispatch macro below, which cannot hold a pragma.)
template <class T>
void scale_row(T* row, int64_t n, T factor) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) row[c] *= factor;
}

}  // namespace

// The operator kernels, registered in ops.cpp (declared in kernels.h).

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> loss_cpu(const Tensor& logits, const Tensor& mix_logits,
                                                            const Tensor& targets, const Tensor& lam,
                                                            const MixPartners& index, const ClassWeight& weight,
                                                            const LossOptions& options) {
  auto [loss, ce, rank, coefs, argmaxes, grad_logits, grad_mix] =
      loss_forward(logits, mix_logits, targets, lam, index, weight, options, /*with_grad=*/false);
  return {loss, ce, rank, coefs, argmaxes};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> loss_with_grad_cpu(
    const Tensor& logits, const Tensor& mix_logits, const Tensor& targets, const Tensor& lam,
    const MixPartners& index, const ClassWeight& weight, const LossOptions& options) {
  return loss_forward(logits, mix_logits, targets, lam, index, weight, options, /*with_grad=*/true);
}

std::tuple<Tensor, Tensor> loss_backward_cpu(const Tensor& grad_loss, const Tensor& logits,
                                             const Tensor& mix_logits, const Tensor& targets, const Tensor& coefs,
                                             const Tensor& argmaxes, int64_t ignore_index,
                                             const ClassWeight& weight) {
  check_loss_backward_args(grad_loss, logits, mix_logits, targets, coefs, argmaxes, weight);
  check_backward_columns(targets, argmaxes, logits.size(1), ignore_index);
  const Tensor g = grad_loss.to(coefs.scalar_type()).contiguous();
  Tensor grad_logits = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor grad_mix = at::empty(mix_logits.sizes(), grad_logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "rankmixup_loss_backward_cpu", [&] {
    loss_backward_kernel<scalar_t>(g, logits, mix_logits, targets.contiguous(), coefs, argmaxes, ignore_index,
                                   weight, grad_logits, grad_mix);
  });
  return {grad_logits, grad_mix};
}

void scale_grads_cpu(const Tensor& grad_logits, const Tensor& grad_mix, const Tensor& grad_loss,
                     const Tensor& targets, int64_t ignore_index) {
  check_scale_grads_args(grad_logits, grad_mix, grad_loss, targets);
  const int64_t batch = grad_logits.size(0), num_classes = grad_logits.size(1);
  const int64_t num_mix = grad_mix.size(0) / batch;
  const Tensor y = targets.contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad_logits.scalar_type(), "rankmixup_scale_grads_cpu", [&] {
    const Tensor g = grad_loss.to(grad_logits.scalar_type()).contiguous();
    const scalar_t* factors = g.const_data_ptr<scalar_t>();
    const bool per_sample = g.numel() != 1;
    const int64_t* labels = y.const_data_ptr<int64_t>();
    scalar_t* raw = grad_logits.data_ptr<scalar_t>();
    scalar_t* mix = grad_mix.data_ptr<scalar_t>();
    // backward() of a scalar loss: nothing to scale anywhere (see below), and no threads to wake
    // for it (at C = 100 the batch would be split, and the fork and join alone cost microseconds).
    if (!per_sample && factors[0] == scalar_t(1)) return;
    at::parallel_for(0, batch, std::max<int64_t>(1, kScaleGrainElements / ((num_mix + 1) * num_classes)),
                     [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const bool ignored = labels[b] == ignore_index;
        const scalar_t factor = factors[per_sample ? b : 0];
        // The forward wrote these rows for a factor of 1 (ignored ones as zeros): scaling by
        // exactly 1 would change no bit. It is the usual case (backward() of a mean or a sum),
        // and skipping it saves a read and a write of every gradient.
        if (factor == scalar_t(1)) continue;
        for (int64_t r = 0; r <= num_mix; ++r) {
          scalar_t* row = r == 0 ? raw + b * num_classes : mix + ((r - 1) * batch + b) * num_classes;
          if (ignored) {
            std::fill_n(row, num_classes, scalar_t(0));
            continue;
          }
          scale_row(row, num_classes, factor);
        }
      }
    });
  });
}

}  // namespace rankmixup::cpu
