// Mixup generation on CUDA: out[k*B + b] = lam[k,b] * x[b] + (1 - lam[k,b]) * x[index[k,b]], as
// csrc/cpu/mix.cpp computes it. x and the incoming gradient are read as contiguous (B, F) rows
// (a copy first if they are not, as on the CPU); lam and index may have any strides (lam is
// often an expanded (K,) view). One team of lanes (rows.cuh) per output row.
//
// Backward: grad_x[b] = sum_k lam[k,b] g[k*B+b] + (1 - lam[k,j]) g[k*B+j] with index[k,j] = b,
// gathered through the inverse permutation (one small scatter of indices, then one gather
// launch): each output element is written once by one thread, summed in k order. Deterministic.
//
// An index outside [0, B), or a row of index that is not a permutation, cannot be reported
// without a host sync (the CPU kernels raise). Nothing is read out of bounds: forward rows with
// an out-of-range partner come out NaN; in the backward, a sample no entry names gets NaN, while
// a sample named twice gets one of its partners' contributions (which one is not defined).
// validate=True in the Python API checks both before any kernel runs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <vector>

#include "kernels.h"
#include "cuda/pairing.cuh"
#include "cuda/rows.cuh"
#include "op_args.h"

namespace rankmixup::cuda {
namespace {

using at::Tensor;

template <class acc_t, int N>
__device__ Array<acc_t, N> nans() {
  Array<acc_t, N> out;
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = std::numeric_limits<acc_t>::quiet_NaN();
  return out;
}

template <int V, class scalar_t>
__global__ void __launch_bounds__(kMaxTeamLanes) mix_kernel(const scalar_t* x, Matrix<at::opmath_type<scalar_t>> lam,
                                                            Matrix<int64_t> index, scalar_t* out, int64_t batch,
                                                            int64_t rows, int64_t features, int lanes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / lanes) + threadIdx.x / lanes;
  if (r >= rows) return;
  const int lane = threadIdx.x % lanes;
  const int64_t k = r / batch, b = r % batch, j = index(k, b);
  const bool in_range = j >= 0 && j < batch;
  const acc_t own = static_cast<acc_t>(lam(k, b)), partner = acc_t(1) - own;
  const scalar_t* xb = x + b * features;
  const scalar_t* xj = x + j * features;
  scalar_t* o = out + r * features;
  for_each_chunk<V>(features, lane, lanes, [&](int64_t f, auto width) {
    constexpr int N = decltype(width)::value;
    Array<acc_t, N> mixed = nans<acc_t, N>();
    if (in_range) {
      const Array<acc_t, N> u = load<N, acc_t>(xb + f), v = load<N, acc_t>(xj + f);
#pragma unroll
      for (int i = 0; i < N; ++i) mixed[i] = own * u[i] + partner * v[i];
    }
    store<N>(o + f, mixed);
  });
}

// inverse[k*B + index[k,b]] = b for the in-range entries (inverse_permutation, pairing.cuh).
__global__ void inverse_permutation_kernel(Matrix<int64_t> index, int64_t num_mix, int64_t batch, int64_t* inverse) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < num_mix * batch;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = i / batch, b = i % batch, j = index(k, b);
    if (j >= 0 && j < batch) inverse[k * batch + j] = b;
  }
}

template <int V, class scalar_t>
__global__ void __launch_bounds__(kMaxTeamLanes) mix_backward_kernel(const scalar_t* grad,
                                                                     Matrix<at::opmath_type<scalar_t>> lam,
                                                                     Matrix<int64_t> index, const int64_t* inverse,
                                                                     scalar_t* grad_x, int64_t num_mix,
                                                                     int64_t batch, int64_t features, int lanes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / lanes) + threadIdx.x / lanes;
  if (b >= batch) return;
  const int lane = threadIdx.x % lanes;
  for_each_chunk<V>(features, lane, lanes, [&](int64_t f, auto width) {
    constexpr int N = decltype(width)::value;
    Array<acc_t, N> acc{};
    for (int64_t k = 0; k < num_mix; ++k) {
      const int64_t j = inverse[k * batch + b];  // the sample whose partner in mix k is b
      if (!names_partner(index, k, b, j, batch)) {  // index[k] is not a permutation
        acc = nans<acc_t, N>();
        break;
      }
      const acc_t own = static_cast<acc_t>(lam(k, b)), partner = acc_t(1) - static_cast<acc_t>(lam(k, j));
      const Array<acc_t, N> gb = load<N, acc_t>(grad + (k * batch + b) * features + f);
      const Array<acc_t, N> gj = load<N, acc_t>(grad + (k * batch + j) * features + f);
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] += own * gb[i] + partner * gj[i];
    }
    store<N>(grad_x + b * features + f, acc);
  });
}

// (B, F) views of x-like tensors and whether all of them allow 16-byte access.
template <class scalar_t>
bool vectorizable(std::initializer_list<const Tensor*> rows) {
  for (const Tensor* t : rows) {
    if (!rows_vectorizable<scalar_t>(t->view({t->size(0), -1}))) return false;
  }
  return true;
}

std::vector<int64_t> with_rows(const Tensor& t, int64_t rows) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape[0] = rows;
  return shape;
}

}  // namespace

at::Tensor inverse_permutation(const Tensor& index, cudaStream_t stream) {
  const int64_t num_mix = index.size(0), batch = index.size(1);
  Tensor inverse = at::empty({num_mix * batch}, index.options().memory_format(at::MemoryFormat::Contiguous));
  launch(inverse_permutation_kernel, std::min<int64_t>(ceil_div(num_mix * batch, kBlockThreads), 1024), kBlockThreads,
         0, stream, Matrix<int64_t>(index), num_mix, batch, inverse.data_ptr<int64_t>());
  return inverse;
}

// The operator kernels, registered in ops.cpp (declared in kernels.h).

Tensor mix_cuda(const Tensor& x, const Tensor& lam, const Tensor& index) {
  check_mix_args("rankmixup::mix", x, lam, index);
  TORCH_CHECK(x.dim() >= 1 && x.size(0) == index.size(1), "rankmixup::mix: x must be (B, *feat) with B = index.size(1)");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t num_mix = index.size(0), batch = index.size(1);
  const Tensor xc = x.contiguous();
  Tensor out = at::empty(with_rows(xc, num_mix * batch), xc.options());
  if (out.numel() == 0) return out;
  const int64_t features = xc.numel() / batch;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rankmixup_mix_cuda", [&] {
    const bool vectorized = vectorizable<scalar_t>({&xc, &out});
    const Teams teams = teams_for(features, vectorized ? kVecWidth<scalar_t> : 1);
    auto kernel = vectorized ? mix_kernel<kVecWidth<scalar_t>, scalar_t> : mix_kernel<1, scalar_t>;
    launch(kernel, ceil_div(out.size(0), teams.per_block()), teams.threads, 0, c10::cuda::getCurrentCUDAStream(),
           xc.const_data_ptr<scalar_t>(), Matrix<at::opmath_type<scalar_t>>(lam), Matrix<int64_t>(index), out.data_ptr<scalar_t>(), batch,
           out.size(0), features, teams.lanes);
  });
  return out;
}

Tensor mix_backward_cuda(const Tensor& grad, const Tensor& lam, const Tensor& index) {
  check_mix_args("rankmixup::mix_backward", grad, lam, index);
  const int64_t num_mix = index.size(0), batch = index.size(1);
  TORCH_CHECK(grad.dim() >= 1 && grad.size(0) == num_mix * batch,
              "rankmixup::mix_backward: grad must be (K*B, *feat)");
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const Tensor gc = grad.contiguous();
  Tensor grad_x = at::empty(with_rows(gc, batch), gc.options());
  if (grad_x.numel() == 0) return grad_x;
  const int64_t features = gc.numel() / gc.size(0);

  const Matrix<int64_t> idx(index);
  const Tensor inverse = inverse_permutation(index, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rankmixup_mix_backward_cuda", [&] {
    const bool vectorized = vectorizable<scalar_t>({&gc, &grad_x});
    const Teams teams = teams_for(features, vectorized ? kVecWidth<scalar_t> : 1);
    auto kernel = vectorized ? mix_backward_kernel<kVecWidth<scalar_t>, scalar_t> : mix_backward_kernel<1, scalar_t>;
    launch(kernel, ceil_div(batch, teams.per_block()), teams.threads, 0, stream, gc.const_data_ptr<scalar_t>(),
           Matrix<at::opmath_type<scalar_t>>(lam), idx, inverse.const_data_ptr<int64_t>(), grad_x.data_ptr<scalar_t>(), num_mix, batch,
           features, teams.lanes);
  });
  return grad_x;
}

}  // namespace rankmixup::cuda
