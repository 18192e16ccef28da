// Fused RankMixup loss forward on CUDA: the same function as csrc/cpu/loss.cpp, through the same
// per-sample math (rankmixup/sample_loss.h). A block owns `samples_per_block` consecutive samples
// and their K+1 rows each; a team of lanes (rows.cuh) scans each row once with an online softmax
// (max, first argmax, sum of exp, sum of logits), the stats meet in shared memory, and one thread
// per sample turns them into the loss and the per-row gradient coefficients the backward uses.
//
// Launches: [mean over a large batch: count valid targets] [class weights: their sums, by ATen]
// -> rows and samples -> [mean/sum: total]. The mean's divisor is counted on the device (by
// every block itself when the batch is small, else by integer atomics: exact either way), so
// nothing waits for the host; the totals are per-block sums in double added by one block in a
// fixed order: deterministic. With class weights, ATen's (deterministic) reductions give their
// sum, the weighted mean's divisor and, with label smoothing, the raw rows' weighted logit sums.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <tuple>

#include "kernels.h"
#include "cuda/reduce.cuh"
#include "cuda/rows.cuh"
#include "op_args.h"
#include "rankmixup/sample_loss.h"

namespace rankmixup::cuda {
namespace {

using at::Tensor;

// Statistics of a part of a row: the online softmax's, plus the sum of the logits (label
// smoothing needs it, and a NaN or +inf sum is how a NaN or +inf logit is detected).
template <class T>
struct RowScan {
  RowStats<T> stats;
  T sum = T(0);

  __device__ void push(T z, int64_t c) {
    stats.push(z, c);
    sum += z;
  }
  // The row's statistics, poisoned as on the CPU (a NaN or +inf, or -inf only).
  __device__ RowStats<T> finish() const {
    RowStats<T> out;
    if (poisons_row(sum, stats.max)) {
      out.poison();
    } else {
      out = stats;
    }
    return out;
  }
};

template <class T>
__device__ RowScan<T> merge(const RowScan<T>& a, const RowScan<T>& b) {
  RowScan<T> out;
  out.stats = rankmixup::merge(a.stats, b.stats);
  out.sum = a.sum + b.sum;
  return out;
}

template <class T>
__device__ RowScan<T> shuffle_scan(const RowScan<T>& x, int mask) {
  RowScan<T> y;
  y.stats.max = shuffle_xor(x.stats.max, mask);
  y.stats.argmax = shuffle_xor(x.stats.argmax, mask);
  y.stats.sumexp = shuffle_xor(x.stats.sumexp, mask);
  y.sum = shuffle_xor(x.sum, mask);
  return y;
}

// Merges the parts of a row held by a team of `lanes` threads; the result is complete in the
// team's lane 0. merge() is commutative, so the xor butterfly gives the same bits in every lane.
// Teams wider than a warp meet in shared memory: then every thread of the block must call this.
template <class T>
__device__ RowScan<T> team_merge(RowScan<T> x, int lanes, RowScan<T>* warp_scans) {
  for (int mask = 1; mask < lanes && mask < kWarpSize; mask <<= 1) x = merge(x, shuffle_scan(x, mask));
  if (lanes > kWarpSize) {
    const int warp = threadIdx.x / kWarpSize;
    if (threadIdx.x % kWarpSize == 0) warp_scans[warp] = x;
    __syncthreads();
    if (threadIdx.x % lanes == 0) {
      for (int w = 1; w < lanes / kWarpSize; ++w) x = merge(x, warp_scans[warp + w]);
    }
    __syncthreads();  // warp_scans is reused by the next row
  }
  return x;
}

// Byte offsets of the kernel's shared arrays: one function for the launcher (size) and the kernel.
struct SharedLayout {
  size_t stats, grads, warp_scans, z_target, z_sum, ce, rank, rel, bytes;
};

__host__ __device__ inline size_t place(size_t& end, size_t align, size_t bytes) {
  const size_t at = (end + align - 1) / align * align;
  end = at + bytes;
  return at;
}

template <class T>
__host__ __device__ SharedLayout shared_layout(int samples, int64_t rows_per_sample, int warps) {
  const size_t rows = static_cast<size_t>(samples * rows_per_sample);
  SharedLayout l{};
  size_t end = 0;
  l.stats = place(end, alignof(RowStats<T>), rows * sizeof(RowStats<T>));  // [sample][row], row 0 raw
  l.grads = place(end, alignof(RowGrad<T>), rows * sizeof(RowGrad<T>));
  l.warp_scans = place(end, alignof(RowScan<T>), warps * sizeof(RowScan<T>));
  l.z_target = place(end, alignof(T), samples * sizeof(T));
  l.z_sum = place(end, alignof(T), samples * sizeof(T));
  l.ce = place(end, alignof(T), samples * sizeof(T));
  l.rank = place(end, alignof(T), samples * sizeof(T));
  l.rel = place(end, alignof(T), samples * (rows_per_sample - 1) * sizeof(T));  // [sample][mix]
  l.bytes = end;
  return l;
}

// Batches up to this size have their valid targets counted by every block of the loss kernel
// (at most a few loads per thread) instead of by a kernel of their own, sparing two launches.
constexpr int64_t kCountInBlockMaxBatch = 2048;

// How many of targets[begin], targets[begin + step], ... (below end) are not ignore_index; every
// thread of the block must call it, and the count is complete in warp 0.
__device__ int64_t count_valid(const int64_t* targets, int64_t stride, int64_t begin, int64_t end, int64_t step,
                               int64_t ignore_index, int64_t* scratch) {
  int64_t count = 0;
  for (int64_t b = begin; b < end; b += step) count += targets[b * stride] != ignore_index;
  return block_sum(count, scratch);
}

template <class scalar_t>
struct ForwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* logits;
  int64_t logits_row_stride, logits_col_stride;
  const scalar_t* mix;
  int64_t mix_row_stride, mix_col_stride;
  const int64_t* targets;
  int64_t targets_stride;
  const acc_t* lam;  // the accumulation dtype, as the op's checks require
  int64_t lam_stride_k, lam_stride_b;
  const int64_t* index;  // the mixes' partners; null: lam holds the relevances (MixPartners, op_args.h)
  int64_t index_stride_k, index_stride_b;
  int64_t batch, classes, num_mix;
  LossOptions options;
  const acc_t* weight;               // class weights (C,), or null: unweighted
  const acc_t* weight_sum;           // with weights: their sum (a device scalar)
  const acc_t* weighted_logit_sums;  // with weights and label smoothing: sum_c w_c z_c per raw row (B,)
  const double* ce_divisor;  // weighted 'mean': the valid targets' summed weights; otherwise null
  int64_t* num_valid;        // reduction 'mean': the count of valid samples; otherwise null
  bool count_in_block;       // 'mean': every block counts, block 0 stores the count in num_valid
  acc_t* row_coefs;          // (K+1, B, kRowCoefs)
  int64_t* row_argmax;       // (K+1, B)
  acc_t *loss, *ce, *rank;   // reduction 'none': (B,) each; otherwise null
  double* partials;          // otherwise: (2, gridDim.x) per-block sums of ce and rank
  int lanes, samples_per_block;
};

// The relevance of mix k of sample b, whose label is `target` (SPEC §3). A partner outside the
// batch is not read (the CPU kernels raise; a device cannot without a host sync): it clears
// *partner_ok, and the caller poisons the sample, as for a label outside [0, C).
template <class scalar_t>
__device__ at::opmath_type<scalar_t> mix_relevance(const ForwardArgs<scalar_t>& a, int64_t k, int64_t b,
                                                   int64_t target, bool* partner_ok) {
  const at::opmath_type<scalar_t> lam = a.lam[k * a.lam_stride_k + b * a.lam_stride_b];
  if (!a.index) return lam;
  const int64_t partner = a.index[k * a.index_stride_k + b * a.index_stride_b];
  if (partner < 0 || partner >= a.batch) {
    *partner_ok = false;
    return lam;
  }
  return pair_relevance(lam, target, a.targets[partner * a.targets_stride]);
}

template <int V, class scalar_t>
__global__ void __launch_bounds__(kMaxTeamLanes) loss_forward_kernel(const ForwardArgs<scalar_t> a) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t rows_per_sample = a.num_mix + 1;
  const SharedLayout layout = shared_layout<acc_t>(a.samples_per_block, rows_per_sample, blockDim.x / kWarpSize);
  auto* stats = reinterpret_cast<RowStats<acc_t>*>(shared + layout.stats);
  auto* grads = reinterpret_cast<RowGrad<acc_t>*>(shared + layout.grads);
  auto* warp_scans = reinterpret_cast<RowScan<acc_t>*>(shared + layout.warp_scans);
  auto* z_target = reinterpret_cast<acc_t*>(shared + layout.z_target);
  auto* z_sum = reinterpret_cast<acc_t*>(shared + layout.z_sum);
  auto* ce = reinterpret_cast<acc_t*>(shared + layout.ce);
  auto* rank = reinterpret_cast<acc_t*>(shared + layout.rank);
  auto* rel = reinterpret_cast<acc_t*>(shared + layout.rel);

  __shared__ int64_t count_scratch[kWarpSize];
  __shared__ int64_t block_count;
  if (a.count_in_block) {
    const int64_t count = count_valid(a.targets, a.targets_stride, threadIdx.x, a.batch, blockDim.x, a.options.ignore_index,
                                      count_scratch);
    if (threadIdx.x == 0) {
      block_count = count;  // read after the __syncthreads below the row loop
      if (blockIdx.x == 0) *a.num_valid = count;
    }
  }

  const int lanes = a.lanes, lane = threadIdx.x % lanes, team = threadIdx.x / lanes, teams = blockDim.x / lanes;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * a.samples_per_block;
  const int samples = static_cast<int>(min(static_cast<int64_t>(a.samples_per_block), a.batch - first));
  const int rows = samples * static_cast<int>(rows_per_sample);

  // Row i of the block is row r of sample s, i = r * samples + s: neighbouring teams read
  // neighbouring rows of memory. The trip count is the same in every thread, as team_merge needs.
  for (int i0 = 0; i0 < rows; i0 += teams) {
    const int i = i0 + team, r = i / samples, s = i % samples;
    const int64_t b = first + s;
    const int64_t target = i < rows ? a.targets[b * a.targets_stride] : a.options.ignore_index;
    const bool valid = target != a.options.ignore_index;  // rows of ignored samples are never read
    const scalar_t* row = r == 0 ? a.logits + b * a.logits_row_stride
                                 : a.mix + ((r - 1) * a.batch + b) * a.mix_row_stride;
    const int64_t col_stride = r == 0 ? a.logits_col_stride : a.mix_col_stride;
    RowScan<acc_t> scan;
    if (valid) {
      for_each_chunk<V>(a.classes, lane, lanes, [&](int64_t c, auto width) {
        constexpr int N = decltype(width)::value;
        const Array<acc_t, N> z = load<N, acc_t>(row + c * col_stride);
#pragma unroll
        for (int j = 0; j < N; ++j) scan.push(z[j], c + j);
      });
    }
    scan = team_merge(scan, lanes, warp_scans);
    if (valid && lane == 0) {
      stats[s * rows_per_sample + r] = scan.finish();
      if (r == 0) {
        z_sum[s] = scan.sum;
        // An out-of-range label is not read (the CPU kernels raise; a device cannot without a
        // host sync): its sample's loss becomes NaN below.
        z_target[s] = target >= 0 && target < a.classes ? static_cast<acc_t>(row[target * col_stride])
                                                        : std::numeric_limits<acc_t>::quiet_NaN();
      }
    }
  }
  __syncthreads();

  if (threadIdx.x < samples) {
    const int s = threadIdx.x;
    const int64_t b = first + s;
    const int64_t target = a.targets[b * a.targets_stride];
    RowStats<acc_t>* sample_stats = stats + s * rows_per_sample;
    RowGrad<acc_t>* sample_grads = grads + s * rows_per_sample;
    const bool valid = target != a.options.ignore_index;
    SampleLoss<acc_t> loss{acc_t(0), acc_t(0)};
    if (valid) {
      const bool label_ok = target >= 0 && target < a.classes;
      bool partners_ok = true;
      acc_t* sample_rel = rel + s * a.num_mix;  // this thread's alone
      for (int64_t k = 0; k < a.num_mix; ++k) sample_rel[k] = mix_relevance(a, k, b, target, &partners_ok);
      if (!label_ok || !partners_ok) sample_stats[0].poison();
      const double count_scale =
          a.num_valid ? mean_scale(static_cast<double>(a.count_in_block ? block_count : *a.num_valid)) : 1.0;
      const double ce_scale = a.ce_divisor ? mean_scale(*a.ce_divisor) : count_scale;
      const LossConfig<acc_t> cfg = loss_config<acc_t>(a.options, a.classes, ce_scale, count_scale);
      const CeInputs<acc_t> ce_in =
          a.weight ? CeInputs<acc_t>{z_target[s], label_ok ? a.weight[target] : acc_t(0), *a.weight_sum,
                                     a.weighted_logit_sums ? a.weighted_logit_sums[b] : acc_t(0)}
                   : CeInputs<acc_t>{z_target[s], acc_t(1), static_cast<acc_t>(a.classes), z_sum[s]};
      loss = sample_loss(cfg, sample_stats[0], ce_in, target, sample_stats + 1, sample_rel, 1, a.num_mix,
                         sample_grads);
    }
    for (int64_t r = 0; r < rows_per_sample; ++r) {
      const int64_t row = r * a.batch + b;
      // An ignored sample's rows get exact zeros (every coefficient 0, argmax 0), as on the CPU.
      if (valid) {
        pack_row(sample_grads[r], sample_stats[r], a.row_coefs + row * kRowCoefs);
      } else {
        pack_ignored_row(a.row_coefs + row * kRowCoefs);
      }
      a.row_argmax[row] = valid ? sample_stats[r].argmax : 0;
    }
    if (a.loss) {
      a.ce[b] = loss.ce;
      a.rank[b] = loss.rank;
      a.loss[b] = total_loss(a.options, loss.ce, loss.rank);
    } else {
      ce[s] = loss.ce;
      rank[s] = loss.rank;
    }
  }

  if (a.partials) {
    __syncthreads();
    if (threadIdx.x < kWarpSize) {
      double ce_sum = 0, rank_sum = 0;
      for (int s = threadIdx.x; s < samples; s += kWarpSize) {
        ce_sum += ce[s];
        rank_sum += rank[s];
      }
      ce_sum = group_sum(ce_sum, kWarpSize);
      rank_sum = group_sum(rank_sum, kWarpSize);
      if (threadIdx.x == 0) {
        a.partials[blockIdx.x] = ce_sum;
        a.partials[gridDim.x + blockIdx.x] = rank_sum;
      }
    }
  }
}

// num_valid (zeroed) += the number of targets that are not ignore_index.
__global__ void count_valid_kernel(const int64_t* targets, int64_t stride, int64_t batch, int64_t ignore_index,
                                   int64_t* num_valid) {
  __shared__ int64_t scratch[kWarpSize];
  const int64_t count = count_valid(targets, stride, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                                    batch, static_cast<int64_t>(gridDim.x) * blockDim.x, ignore_index, scratch);
  if (threadIdx.x == 0 && count) {
    atomicAdd(reinterpret_cast<unsigned long long*>(num_valid), static_cast<unsigned long long>(count));
  }
}

// The reduced loss and parts from the per-block sums (SPEC §5), as the CPU kernel forms them.
template <class acc_t>
__global__ void total_kernel(const double* partials, int64_t blocks, const int64_t* num_valid,
                             const double* ce_divisor, LossOptions options, acc_t* loss, acc_t* ce, acc_t* rank) {
  __shared__ double scratch[kWarpSize];
  double ce_sum = 0, rank_sum = 0;
  for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x) {
    ce_sum += partials[i];
    rank_sum += partials[blocks + i];
  }
  ce_sum = block_sum(ce_sum, scratch);
  __syncthreads();  // scratch is reused
  rank_sum = block_sum(rank_sum, scratch);
  if (threadIdx.x == 0) {
    const double count_scale = num_valid ? mean_scale(static_cast<double>(*num_valid)) : 1.0;
    const double ce_scale = ce_divisor ? mean_scale(*ce_divisor) : count_scale;
    const acc_t ce_part = static_cast<acc_t>(ce_sum * ce_scale);
    const acc_t rank_part = static_cast<acc_t>(rank_sum * count_scale);
    *ce = ce_part;
    *rank = rank_part;
    *loss = total_loss(options, ce_part, rank_part);
  }
}

struct ForwardShape {
  Teams teams;
  int samples_per_block;
  size_t shared_bytes;
  int64_t blocks;
};

template <class acc_t>
ForwardShape forward_shape(int64_t batch, int64_t classes, int64_t num_mix, int vec) {
  const Teams teams = teams_for(classes, vec);
  const int samples = static_cast<int>(std::max<int64_t>(1, teams.per_block() / (num_mix + 1)));
  const size_t bytes = shared_layout<acc_t>(samples, num_mix + 1, teams.threads / kWarpSize).bytes;
  // A sample's K+1 rows meet in shared memory; the default 48 KiB per block hold several
  // hundred of them, less the kernel's static count scratch (count_scratch, block_count), which
  // the dynamic array follows at its 16-byte alignment.
  constexpr size_t kStaticShared = (kWarpSize + 1) * sizeof(int64_t);
  constexpr size_t kMaxShared = 48 * 1024 - (kStaticShared + 15) / 16 * 16;
  TORCH_CHECK(bytes <= kMaxShared, "rankmixup::loss: K = ", num_mix, " mixes per sample need ", bytes,
              " bytes of shared memory in the CUDA kernel, more than its ", kMaxShared);
  return {teams, samples, bytes, ceil_div(batch, samples)};
}

}  // namespace

// The operator kernels, registered in ops.cpp (declared in kernels.h).

// What the kernel reads of the class weights beyond the weights themselves, from ATen's
// deterministic reductions on the device (undefined where not needed).
struct WeightSums {
  Tensor total;                // sum_c w_c
  Tensor weighted_logit_sums;  // label smoothing: sum_c w_c z_c per raw row (B,)
  Tensor ce_divisor;           // 'mean': the valid targets' summed weights, in double
};

WeightSums weight_sums(const Tensor& weight, const Tensor& logits, const Tensor& targets,
                       const LossOptions& options) {
  WeightSums sums;
  sums.total = weight.sum();
  if (smooths_labels(options)) sums.weighted_logit_sums = at::mv(logits.to(weight.scalar_type()), weight);
  if (options.reduction == Reduction::kMean) {
    const Tensor valid = targets.ne(options.ignore_index);
    // Out-of-range labels gather a clamped class (their samples' losses are NaN anyway).
    const Tensor target_weights = weight.index_select(0, targets.clamp(0, logits.size(1) - 1));
    sums.ce_divisor = at::where(valid, target_weights, at::zeros({}, weight.options())).sum(at::kDouble);
  }
  return sums;
}

template <class T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> loss_cuda(const Tensor& logits, const Tensor& mix_logits,
                                                             const Tensor& targets, const Tensor& lam,
                                                             const MixPartners& index, const ClassWeight& weight,
                                                             const LossOptions& options) {
  check_loss_args(logits, mix_logits, targets, lam, index, weight);
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t batch = logits.size(0), classes = logits.size(1), num_mix = lam.size(0);

  const auto acc_options = logits.options().dtype(accumulation_type(logits.scalar_type()));
  Tensor coefs = at::empty({num_mix + 1, batch, kRowCoefs}, acc_options);
  Tensor argmaxes = at::empty({num_mix + 1, batch}, logits.options().dtype(at::kLong));
  Tensor num_valid;
  const bool count_in_block = options.reduction == Reduction::kMean && batch <= kCountInBlockMaxBatch;
  if (count_in_block) {
    num_valid = at::empty({}, logits.options().dtype(at::kLong));
  } else if (options.reduction == Reduction::kMean) {
    num_valid = at::zeros({}, logits.options().dtype(at::kLong));
    const int64_t blocks = std::min<int64_t>(ceil_div(batch, kBlockThreads * 8), 1024);
    launch(count_valid_kernel, blocks, kBlockThreads, 0, stream, targets.const_data_ptr<int64_t>(), targets.stride(0),
           batch, options.ignore_index, num_valid.data_ptr<int64_t>());
  }
  const WeightSums sums = weight.has_value() ? weight_sums(*weight, logits, targets, options) : WeightSums{};
  Tensor loss, ce, rank;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "rankmixup_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool vectorized = rows_vectorizable<scalar_t>(logits) && rows_vectorizable<scalar_t>(mix_logits);
    const ForwardShape shape = forward_shape<acc_t>(batch, classes, num_mix, vectorized ? kVecWidth<scalar_t> : 1);
    Tensor partials;
    if (options.reduction == Reduction::kNone) {
      loss = at::empty({batch}, acc_options);
      ce = at::empty({batch}, acc_options);
      rank = at::empty({batch}, acc_options);
    } else {
      loss = at::empty({}, acc_options);
      ce = at::empty({}, acc_options);
      rank = at::empty({}, acc_options);
      partials = at::empty({2, shape.blocks}, acc_options.dtype(at::kDouble));
    }
    const bool none = options.reduction == Reduction::kNone;
    const ForwardArgs<scalar_t> args{logits.const_data_ptr<scalar_t>(),
                                     logits.stride(0),
                                     logits.stride(1),
                                     mix_logits.const_data_ptr<scalar_t>(),
                                     mix_logits.stride(0),
                                     mix_logits.stride(1),
                                     targets.const_data_ptr<int64_t>(),
                                     targets.stride(0),
                                     lam.const_data_ptr<acc_t>(),
                                     lam.stride(0),
                                     lam.stride(1),
                                     index ? index->const_data_ptr<int64_t>() : nullptr,
                                     index ? index->stride(0) : 0,
                                     index ? index->stride(1) : 0,
                                     batch,
                                     classes,
                                     num_mix,
                                     options,
                                     class_weight_data<acc_t>(weight),
                                     data_or_null<acc_t>(sums.total),
                                     data_or_null<acc_t>(sums.weighted_logit_sums),
                                     data_or_null<double>(sums.ce_divisor),
                                     num_valid.defined() ? num_valid.data_ptr<int64_t>() : nullptr,
                                     count_in_block,
                                     coefs.data_ptr<acc_t>(),
                                     argmaxes.data_ptr<int64_t>(),
                                     none ? loss.data_ptr<acc_t>() : nullptr,
                                     none ? ce.data_ptr<acc_t>() : nullptr,
                                     none ? rank.data_ptr<acc_t>() : nullptr,
                                     none ? nullptr : partials.data_ptr<double>(),
                                     shape.teams.lanes,
                                     shape.samples_per_block};
    auto kernel = vectorized ? loss_forward_kernel<kVecWidth<scalar_t>, scalar_t> : loss_forward_kernel<1, scalar_t>;
    launch(kernel, shape.blocks, shape.teams.threads, shape.shared_bytes, stream, args);
    if (!none) {
      launch(total_kernel<acc_t>, 1, kBlockThreads, 0, stream, partials.const_data_ptr<double>(), shape.blocks,
             data_or_null<int64_t>(num_valid), data_or_null<double>(sums.ce_divisor), options,
             loss.data_ptr<acc_t>(), ce.data_ptr<acc_t>(), rank.data_ptr<acc_t>());
    }
  });
  return {loss, ce, rank, coefs, argmaxes};
}

}  // namespace rankmixup::cuda
