// Mixup generation on the CPU: out[k*B + b] = lam[k,b] * x[b] + (1 - lam[k,b]) * x[index[k,b]],
// and the relevance of each mix read off mixed soft targets (the drop-in classes').
// Forward: one pass over the output rows. Backward: one pass over the samples, gathering
// through the inverse permutation, so no two tasks ever write the same element (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/pairing.h"
#include "kernels.h"
#include "op_args.h"

namespace rankmixup::cpu {
namespace {

using at::Tensor;

constexpr int64_t kGrainElements = 1 << 15;
// soft_relevance scans rows of at most this many classes here, and inputs of at most this many
// elements; larger inputs of longer rows go to ATen's amax. Timed on the 2-core machine (warm,
// float32): the one pass is faster up to about 250k elements ((384, 200): 7.9 against 12.2 us;
// (384, 1000): 30.9 against 23.3 us), and between other work the composite's three ATen calls
// cost more still.
constexpr int64_t kSoftRelevanceOnePassClasses = 64;
constexpr int64_t kSoftRelevanceOnePassElements = 1 << 18;
using UnitStride = std::integral_constant<int64_t, 1>;
// Features per block of the backward's float accumulator: small enough to stay in L1.
constexpr int64_t kBlock = 1024;

// The largest of n values a stride apart, NaN if any is NaN (as torch.amax); exact in any dtype.
// (Out of the dispatch macros, which cannot hold a pragma.) Stride is int64_t, or UnitStride for
// contiguous rows: a loop the compiler vectorizes with plain loads, where a stride known only at
// run time takes element-wise gathers (about 6x slower on 100 classes).
template <class acc_t, class scalar_t, class Stride>
acc_t largest_of(const scalar_t* values, int64_t n, Stride stride) {
  acc_t largest = -std::numeric_limits<acc_t>::infinity();
  int nan = 0;
#pragma omp simd reduction(max : largest) reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(values[i * stride]);
    largest = std::max(largest, v);
    nan |= v != v;
  }
  return nan ? std::numeric_limits<acc_t>::quiet_NaN() : largest;
}

template <class scalar_t>
void mix_kernel(const Tensor& x, const Matrix<at::opmath_type<scalar_t>>& lam, const Matrix<int64_t>& index,
                Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = x.size(0), features = x.numel() / batch;
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  at::parallel_for(0, out.size(0), std::max<int64_t>(1, kGrainElements / features), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t k = r / batch, b = r % batch;
      const acc_t a = static_cast<acc_t>(lam(k, b));
      const scalar_t* xb = src + b * features;
      const scalar_t* xj = src + index(k, b) * features;
      scalar_t* o = dst + r * features;
#pragma omp simd
      for (int64_t f = 0; f < features; ++f) {
        o[f] = static_cast<scalar_t>(a * static_cast<acc_t>(xb[f]) + (acc_t(1) - a) * static_cast<acc_t>(xj[f]));
      }
    }
  });
}

// grad_x[b] = sum_k lam[k,b] g[k*B+b] + (1 - lam[k,j]) g[k*B+j], j = inverse[k][b] (SPEC §2);
// accumulated in acc_t over blocks of features, rounded once.
template <class scalar_t>
void mix_backward_kernel(const Tensor& grad, const Matrix<at::opmath_type<scalar_t>>& lam, const std::vector<int64_t>& inverse,
                         int64_t num_mix, Tensor& grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = grad_x.size(0), features = grad_x.numel() / batch;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  scalar_t* dst = grad_x.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (features * num_mix));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    acc_t acc[kBlock];
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t f0 = 0; f0 < features; f0 += kBlock) {
        const int64_t n = std::min(kBlock, features - f0);
        std::fill_n(acc, n, acc_t(0));
        for (int64_t k = 0; k < num_mix; ++k) {
          const int64_t j = inverse[k * batch + b];
          const acc_t own = static_cast<acc_t>(lam(k, b));
          const acc_t partner = acc_t(1) - static_cast<acc_t>(lam(k, j));
          const scalar_t* gb = g + (k * batch + b) * features + f0;
          const scalar_t* gj = g + (k * batch + j) * features + f0;
#pragma omp simd
          for (int64_t f = 0; f < n; ++f) acc[f] += own * static_cast<acc_t>(gb[f]) + partner * static_cast<acc_t>(gj[f]);
        }
        std::copy_n(acc, n, dst + b * features + f0);
      }
    }
  });
}

}  // namespace

// The operator kernels, registered in ops.cpp (declared in kernels.h).

Tensor mix_cpu(const Tensor& x, const Tensor& lam, const Tensor& index) {
  check_mix_args("rankmixup::mix", x, lam, index);
  TORCH_CHECK(x.dim() >= 1 && x.size(0) == index.size(1), "rankmixup::mix: x must be (B, *feat) with B = index.size(1)");
  const int64_t num_mix = index.size(0), batch = index.size(1);
  const Matrix<int64_t> idx(index);
  check_index_range("rankmixup::mix", idx, num_mix, batch);
  const Tensor xc = x.contiguous();
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape[0] = num_mix * batch;
  Tensor out = at::empty(out_shape, xc.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rankmixup_mix_cpu",
                                  [&] { mix_kernel<scalar_t>(xc, Matrix<at::opmath_type<scalar_t>>(lam), idx, out); });
  return out;
}

Tensor mix_backward_cpu(const Tensor& grad, const Tensor& lam, const Tensor& index) {
  check_mix_args("rankmixup::mix_backward", grad, lam, index);
  const int64_t num_mix = index.size(0), batch = index.size(1);
  TORCH_CHECK(grad.dim() >= 1 && grad.size(0) == num_mix * batch,
              "rankmixup::mix_backward: grad must be (K*B, *feat)");
  const Matrix<int64_t> idx(index);
  const std::vector<int64_t> inverse = inverse_permutation("rankmixup::mix_backward", idx, num_mix, batch);
  const Tensor gc = grad.contiguous();
  std::vector<int64_t> shape(grad.sizes().begin(), grad.sizes().end());
  shape[0] = batch;
  Tensor grad_x = at::empty(shape, gc.options());
  if (grad_x.numel() == 0) return grad_x;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rankmixup_mix_backward_cpu",
                                  [&] {
                                    const Matrix<at::opmath_type<scalar_t>> lam_m(lam);
                                    mix_backward_kernel<scalar_t>(gc, lam_m, inverse, num_mix, grad_x);
                                  });
  return grad_x;
}

Tensor soft_relevance_cpu(const Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype) {
  check_soft_relevance_args(soft_targets, num_mix, dtype);
  const int64_t rows = soft_targets.size(0), classes = soft_targets.size(1);
  // Large inputs of long rows: ATen's amax, vectorised for this CPU's ISA (this file is compiled
  // for baseline x86-64, and its loop runs at about half amax's speed on 1000 classes), then the
  // snap: relevance.cpp's composite. Short rows, or few of them (the paper's shapes): one pass,
  // without the fixed cost of those three ATen calls.
  if (classes > kSoftRelevanceOnePassClasses && rows * classes > kSoftRelevanceOnePassElements) {
    return soft_relevance_composite(soft_targets, num_mix, dtype);
  }
  const int64_t row_stride = soft_targets.stride(0), col_stride = soft_targets.stride(1);
  Tensor rel = at::empty({num_mix, rows / num_mix}, soft_targets.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, soft_targets.scalar_type(), "rankmixup_soft_relevance_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using soft_t = scalar_t;
    const soft_t* soft = soft_targets.const_data_ptr<soft_t>();
    AT_DISPATCH_FLOATING_TYPES(dtype, "rankmixup_soft_relevance_cpu_out", [&] {
      using out_t = scalar_t;
      out_t* out = rel.data_ptr<out_t>();
      const out_t one_within = static_cast<out_t>(1.0 - kSoftRelevanceOneTolerance);
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / classes), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const soft_t* row = soft + r * row_stride;
          const acc_t largest = col_stride == 1 ? largest_of<acc_t>(row, classes, UnitStride{})
                                                : largest_of<acc_t>(row, classes, col_stride);
          const out_t value = static_cast<out_t>(largest);
          out[r] = value >= one_within ? out_t(1) : value;
        }
      });
    });
  });
  return rel;
}

}  // namespace rankmixup::cpu
