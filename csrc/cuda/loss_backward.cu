// Fused RankMixup loss backward on CUDA: re-reads each valid row once and writes
//     grad_output * (scale_p * softmax(z)_c + constant + at_max [c == argmax] + at_target [c == target])
// (the raw row's constant times the class weight w_c, for a weighted loss)
// from the few numbers per row the forward kept (sample_loss.h: pack_row / unpack_row), as
// csrc/cpu/loss.cpp does. Rows are independent: one team of lanes (rows.cuh) per row, no
// reductions, and rows of ignored samples are written as zeros without being read.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "kernels.h"
#include "cuda/rows.cuh"
#include "op_args.h"
#include "rankmixup/sample_loss.h"

namespace rankmixup::cuda {
namespace {

using at::Tensor;

template <class scalar_t>
struct BackwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* grad_loss;  // (1,) or (B,)
  bool per_sample;
  const scalar_t* logits;
  int64_t logits_row_stride, logits_col_stride;
  const scalar_t* mix;
  int64_t mix_row_stride, mix_col_stride;
  const int64_t* targets;
  int64_t targets_stride;
  const acc_t* weight;        // class weights (C,), or null: unweighted
  const acc_t* row_coefs;     // (K+1, B, kRowCoefs)
  const int64_t* row_argmax;  // (K+1, B)
  int64_t batch, classes, num_mix, ignore_index;
  scalar_t* grad_logits;  // (B, C), contiguous
  scalar_t* grad_mix;     // (K*B, C), contiguous
  int lanes;
};

template <int V, class scalar_t>
__global__ void __launch_bounds__(kMaxTeamLanes) loss_backward_kernel(const BackwardArgs<scalar_t> a) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lanes = a.lanes, lane = threadIdx.x % lanes;
  // row = r * B + b: row r of sample b's list, r = 0 the raw row, r = 1 + k mix k (row k*B + b).
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / lanes) + threadIdx.x / lanes;
  if (row >= (a.num_mix + 1) * a.batch) return;
  const int64_t b = row % a.batch;
  const bool raw = row < a.batch;
  const int64_t target = a.targets[b * a.targets_stride];
  scalar_t* out = raw ? a.grad_logits + b * a.classes : a.grad_mix + (row - a.batch) * a.classes;

  if (target == a.ignore_index) {
    for_each_chunk<V>(a.classes, lane, lanes, [&](int64_t c, auto width) {
      constexpr int N = decltype(width)::value;
      store<N>(out + c, Array<acc_t, N>{});
    });
    return;
  }
  const scalar_t* in = raw ? a.logits + b * a.logits_row_stride : a.mix + (row - a.batch) * a.mix_row_stride;
  const int64_t col_stride = raw ? a.logits_col_stride : a.mix_col_stride;
  acc_t row_max;
  const RowGrad<acc_t> grad = unpack_row(a.row_coefs + row * kRowCoefs, a.row_argmax[row], raw ? target : -1,
                                         a.grad_loss[a.per_sample ? b : 0], &row_max);
  for_each_chunk<V>(a.classes, lane, lanes, [&](int64_t c, auto width) {
    constexpr int N = decltype(width)::value;
    Array<acc_t, N> g = load<N, acc_t>(in + c * col_stride);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      g[j] = grad.at(exp_(g[j] - row_max), c + j, raw && a.weight ? a.weight[c + j] : acc_t(1));
    }
    store<N>(out + c, g);
  });
}

}  // namespace

// The operator kernels, registered in ops.cpp (declared in kernels.h).

std::tuple<Tensor, Tensor> loss_backward_cuda(const Tensor& grad_loss, const Tensor& logits,
                                              const Tensor& mix_logits, const Tensor& targets, const Tensor& coefs,
                                              const Tensor& argmaxes, int64_t ignore_index,
                                              const ClassWeight& weight) {
  check_loss_backward_args(grad_loss, logits, mix_logits, targets, coefs, argmaxes, weight);
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t batch = logits.size(0), classes = logits.size(1), num_mix = coefs.size(0) - 1;
  const Tensor g = grad_loss.to(coefs.scalar_type()).contiguous();
  Tensor grad_logits = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  Tensor grad_mix = at::empty(mix_logits.sizes(), grad_logits.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "rankmixup_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // The outputs' rows start aligned only when C is a multiple of the vector width.
    const bool vectorized = rows_vectorizable<scalar_t>(logits) && rows_vectorizable<scalar_t>(mix_logits) &&
                            rows_vectorizable<scalar_t>(grad_logits) && rows_vectorizable<scalar_t>(grad_mix);
    const Teams teams = teams_for(classes, vectorized ? kVecWidth<scalar_t> : 1);
    const BackwardArgs<scalar_t> args{g.const_data_ptr<acc_t>(),
                                      g.numel() != 1,
                                      logits.const_data_ptr<scalar_t>(),
                                      logits.stride(0),
                                      logits.stride(1),
                                      mix_logits.const_data_ptr<scalar_t>(),
                                      mix_logits.stride(0),
                                      mix_logits.stride(1),
                                      targets.const_data_ptr<int64_t>(),
                                      targets.stride(0),
                                      class_weight_data<acc_t>(weight),
                                      coefs.const_data_ptr<acc_t>(),
                                      argmaxes.const_data_ptr<int64_t>(),
                                      batch,
                                      classes,
                                      num_mix,
                                      ignore_index,
                                      grad_logits.data_ptr<scalar_t>(),
                                      grad_mix.data_ptr<scalar_t>(),
                                      teams.lanes};
    auto kernel = vectorized ? loss_backward_kernel<kVecWidth<scalar_t>, scalar_t> : loss_backward_kernel<1, scalar_t>;
    launch(kernel, ceil_div((num_mix + 1) * batch, teams.per_block()), teams.threads, 0, stream, args);
  });
  return {grad_logits, grad_mix};
}

}  // namespace rankmixup::cuda
