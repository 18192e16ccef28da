// CutMix on CUDA: out[k*B + b] is x[b] with the box boxes[k, b] pasted from x[index[k, b]], as
// csrc/cpu/cutmix.cpp computes it. x and the result are dense in one order (contiguous or
// channels-last, rankmixup/boxes.h), so an element's offset within its image is the same in
// both; one thread per output element (grid-stride), reading whichever of x[b] and the partner
// covers it, in memory order (coalesced).
//
// Backward: one thread per element of grad_x, gathering through the inverse permutation
// (pairing.cuh): the own rows' terms outside their boxes and the partners' inside theirs, each
// summed in k order, then added, as the CPU does. Deterministic, no atomics.
//
// As for mix (mix.cu), a bad index cannot be reported without a host sync, and nothing is read
// out of bounds: an element the box takes from an out-of-range partner comes out NaN, and in the
// backward a sample that a row of index does not name exactly once gets NaN.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "cuda/pairing.cuh"
#include "cuda/rows.cuh"
#include "kernels.h"
#include "op_args.h"
#include "rankmixup/boxes.h"

namespace rankmixup::cuda {
namespace {

using at::Tensor;

constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops: enough blocks to fill any GPU

template <class scalar_t>
__device__ scalar_t nan_value() {
  return static_cast<scalar_t>(std::numeric_limits<at::opmath_type<scalar_t>>::quiet_NaN());
}

template <class scalar_t>
__global__ void paste_kernel(const scalar_t* x, BoxMatrix boxes, Matrix<int64_t> index, ImageLayout layout,
                             int64_t image, int64_t batch, int64_t total, scalar_t* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / image, offset = i % image, k = r / batch, b = r % batch;
    if (!layout.in_box(boxes(k, b), offset)) {
      out[i] = x[b * image + offset];
      continue;
    }
    const int64_t j = index(k, b);
    out[i] = j >= 0 && j < batch ? x[j * image + offset] : nan_value<scalar_t>();
  }
}

template <class scalar_t>
__global__ void paste_backward_kernel(const scalar_t* grad, BoxMatrix boxes, Matrix<int64_t> index,
                                      const int64_t* inverse, ImageLayout layout, int64_t image, int64_t num_mix,
                                      int64_t batch, scalar_t* grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < batch * image;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / image, offset = i % image;
    acc_t own = 0, partners = 0;
    for (int64_t k = 0; k < num_mix; ++k) {
      if (!layout.in_box(boxes(k, b), offset)) own += static_cast<acc_t>(grad[(k * batch + b) * image + offset]);
      const int64_t j = inverse[k * batch + b];  // the sample whose mix k took b as its partner
      if (!names_partner(index, k, b, j, batch)) {  // index[k] is not a permutation
        own = std::numeric_limits<acc_t>::quiet_NaN();
        break;
      }
      if (layout.in_box(boxes(k, j), offset)) partners += static_cast<acc_t>(grad[(k * batch + j) * image + offset]);
    }
    grad_x[i] = static_cast<scalar_t>(own + partners);
  }
}

ImageLayout layout_of(const Tensor& t, at::MemoryFormat format) {
  return ImageLayout::of(t.size(1), t.size(2), t.size(3), format == at::MemoryFormat::ChannelsLast);
}

int64_t blocks_for(int64_t elements) { return std::min(ceil_div(elements, kBlockThreads), kMaxBlocks); }

}  // namespace

// The operator kernels, registered in ops.cpp (declared in kernels.h).

Tensor paste_boxes_cuda(const Tensor& x, const Tensor& boxes, const Tensor& index) {
  check_paste_boxes_args("rankmixup::paste_boxes", x, boxes, index, /*per_mix_rows=*/false);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t num_mix = index.size(0), batch = index.size(1);
  const at::MemoryFormat format = image_memory_format(x);
  const Tensor xc = x.contiguous(format);
  Tensor out = at::empty({num_mix * batch, x.size(1), x.size(2), x.size(3)}, xc.options().memory_format(format));
  if (out.numel() == 0) return out;
  const int64_t image = xc.numel() / batch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rankmixup_paste_boxes_cuda", [&] {
    launch(paste_kernel<scalar_t>, blocks_for(out.numel()), kBlockThreads, 0, c10::cuda::getCurrentCUDAStream(),
           xc.const_data_ptr<scalar_t>(), box_matrix(boxes), Matrix<int64_t>(index), layout_of(xc, format), image, batch,
           out.numel(), out.data_ptr<scalar_t>());
  });
  return out;
}

Tensor paste_boxes_backward_cuda(const Tensor& grad, const Tensor& boxes, const Tensor& index) {
  check_paste_boxes_args("rankmixup::paste_boxes_backward", grad, boxes, index, /*per_mix_rows=*/true);
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t num_mix = index.size(0), batch = index.size(1);
  const at::MemoryFormat format = image_memory_format(grad);
  const Tensor gc = grad.contiguous(format);
  Tensor grad_x = at::empty({batch, grad.size(1), grad.size(2), grad.size(3)}, gc.options().memory_format(format));
  if (grad_x.numel() == 0) return grad_x;
  const int64_t image = grad_x.numel() / batch;
  const Tensor inverse = inverse_permutation(index, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rankmixup_paste_boxes_backward_cuda", [&] {
    launch(paste_backward_kernel<scalar_t>, blocks_for(grad_x.numel()), kBlockThreads, 0, stream,
           gc.const_data_ptr<scalar_t>(), box_matrix(boxes), Matrix<int64_t>(index), inverse.const_data_ptr<int64_t>(),
           layout_of(gc, format), image, num_mix, batch, grad_x.data_ptr<scalar_t>());
  });
  return grad_x;
}

}  // namespace rankmixup::cuda
