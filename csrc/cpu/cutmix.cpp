// CutMix on the CPU: out[k*B + b] is x[b] with the box boxes[k, b] pasted from x[index[k, b]].
// x and the result are dense in one order (contiguous or channels-last, rankmixup/boxes.h), so an
// image is a sequence of runs of row_stride elements that share a pixel row, and a box covers one
// contiguous span of each run in its rows: the forward copies three spans a run, whatever the dtype.
// Backward: one pass over the samples' runs, gathering through the inverse permutation, so no two
// tasks write the same element (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu/pairing.h"
#include "kernels.h"
#include "op_args.h"
#include "rankmixup/boxes.h"

namespace rankmixup::cpu {
namespace {

using at::Tensor;

constexpr int64_t kGrainElements = 1 << 15;

// The images of x, grad and the results: their layout, and where a box lies in each run.
struct Images {
  ImageLayout layout;
  int64_t numel;  // elements per image
  int64_t runs() const { return numel / layout.row_stride; }
  // The span [begin, end) of a run that `box` covers, empty where the run's row is outside it.
  std::pair<int64_t, int64_t> span(const Box& box, int64_t run) const {
    const Box clipped = clip_to_image(box, layout.height, layout.width);
    // Runs are the (c, h) pairs of a contiguous image and the rows h of a channels-last one:
    // either way, run % H is the row.
    if (!clipped.has_row(run % layout.height)) return {0, 0};
    return {clipped.left * layout.col_stride, clipped.right * layout.col_stride};
  }
};

Images images_of(const Tensor& t, at::MemoryFormat format) {
  const auto layout = ImageLayout::of(t.size(1), t.size(2), t.size(3), format == at::MemoryFormat::ChannelsLast);
  return {layout, t.size(1) * t.size(2) * t.size(3)};
}

void paste_kernel(const Tensor& x, const BoxMatrix& boxes, const Matrix<int64_t>& index, const Images& images,
                  Tensor& out) {
  const int64_t batch = x.size(0), runs = images.runs(), run_length = images.layout.row_stride;
  const size_t item = x.element_size();
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, out.size(0) * runs, std::max<int64_t>(1, kGrainElements / run_length), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const int64_t r = q / runs, run = q % runs, k = r / batch, b = r % batch;
      const int64_t offset = run * run_length;
      const auto [left, right] = images.span(boxes(k, b), run);
      const char* own = src + (b * images.numel + offset) * item;
      const char* partner = src + (index(k, b) * images.numel + offset) * item;
      char* o = dst + (r * images.numel + offset) * item;
      std::memcpy(o, own, left * item);
      std::memcpy(o + left * item, partner + left * item, (right - left) * item);
      std::memcpy(o + right * item, own + right * item, (run_length - right) * item);
    }
  });
}

template <class acc_t, class scalar_t>
void accumulate(acc_t* acc, const scalar_t* g, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) acc[i] += static_cast<acc_t>(g[i]);
}

// grad_x[b] = sum_k (g[k*B + b] outside box (k, b)) + sum_k (g[k*B + j] inside box (k, j)),
// j = inverse[k][b]: the two sums apart and in k order, then added, as the reference's autograd
// adds them (the own rows' sum over k, the partners' index_put), so that float32 and float64
// results are the reference's bit for bit on the CPU.
template <class scalar_t>
void paste_backward_kernel(const Tensor& grad, const BoxMatrix& boxes, const std::vector<int64_t>& inverse,
                           int64_t num_mix, const Images& images, Tensor& grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch = grad_x.size(0), runs = images.runs(), run_length = images.layout.row_stride;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  scalar_t* dst = grad_x.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (run_length * num_mix));
  at::parallel_for(0, batch * runs, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> own(run_length), partners(run_length);
    for (int64_t q = begin; q < end; ++q) {
      const int64_t b = q / runs, run = q % runs, offset = run * run_length;
      std::fill(own.begin(), own.end(), acc_t(0));
      std::fill(partners.begin(), partners.end(), acc_t(0));
      for (int64_t k = 0; k < num_mix; ++k) {
        const scalar_t* g_own = g + (k * batch + b) * images.numel + offset;
        const auto [left, right] = images.span(boxes(k, b), run);
        accumulate(own.data(), g_own, 0, left);
        accumulate(own.data(), g_own, right, run_length);
        const int64_t j = inverse[k * batch + b];  // the sample whose mix k took b as its partner
        const auto [from, to] = images.span(boxes(k, j), run);
        accumulate(partners.data(), g + (k * batch + j) * images.numel + offset, from, to);
      }
      scalar_t* o = dst + b * images.numel + offset;
      for (int64_t i = 0; i < run_length; ++i) o[i] = static_cast<scalar_t>(own[i] + partners[i]);
    }
  });
}

std::vector<int64_t> with_rows(const Tensor& t, int64_t rows) {
  return {rows, t.size(1), t.size(2), t.size(3)};
}

}  // namespace

// The operator kernels, registered in ops.cpp (declared in kernels.h).

Tensor paste_boxes_cpu(const Tensor& x, const Tensor& boxes, const Tensor& index) {
  check_paste_boxes_args("rankmixup::paste_boxes", x, boxes, index, /*per_mix_rows=*/false);
  const int64_t num_mix = index.size(0), batch = index.size(1);
  const Matrix<int64_t> idx(index);
  check_index_range("rankmixup::paste_boxes", idx, num_mix, batch);
  const at::MemoryFormat format = image_memory_format(x);
  const Tensor xc = x.contiguous(format);
  Tensor out = at::empty(with_rows(x, num_mix * batch), xc.options().memory_format(format));
  if (out.numel() > 0) paste_kernel(xc, box_matrix(boxes), idx, images_of(xc, format), out);
  return out;
}

Tensor paste_boxes_backward_cpu(const Tensor& grad, const Tensor& boxes, const Tensor& index) {
  check_paste_boxes_args("rankmixup::paste_boxes_backward", grad, boxes, index, /*per_mix_rows=*/true);
  const int64_t num_mix = index.size(0), batch = index.size(1);
  const std::vector<int64_t> inverse =
      inverse_permutation("rankmixup::paste_boxes_backward", Matrix<int64_t>(index), num_mix, batch);
  const at::MemoryFormat format = image_memory_format(grad);
  const Tensor gc = grad.contiguous(format);
  Tensor grad_x = at::empty(with_rows(grad, batch), gc.options().memory_format(format));
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rankmixup_paste_boxes_backward_cpu", [&] {
    paste_backward_kernel<scalar_t>(gc, box_matrix(boxes), inverse, num_mix, images_of(gc, format), grad_x);
  });
  return grad_x;
}

}  // namespace rankmixup::cpu
