// How the CUDA kernels walk rows: a *team* of `lanes` threads (a power of two, up to a whole
// block) owns one row at a time, and each lane takes every lanes-th 16-byte vector of it when
// the rows allow vector access, then every lanes-th remaining element (any column stride).
// Small rows (CIFAR's C = 10 or 100) get a few lanes each, so one block covers many rows;
// large rows (C up to 128k and beyond) get a whole block that loops over them. Logits of any
// strides are read in place, never copied: a layout that rules out vectors only costs the
// element-wise path. Offsets are 64-bit throughout (rows * C may pass 2^31).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

namespace rankmixup::cuda {

constexpr int kBlockThreads = 256;    // the block size when rows need fewer threads than this
constexpr int kMaxTeamLanes = 1024;   // the most threads that share one row (a whole block)
constexpr int64_t kVecsPerLane = 4;   // teams are sized so each lane has about this many vectors

// Elements of T in one 16-byte access.
template <class T>
constexpr int kVecWidth = 16 / static_cast<int>(sizeof(T));

template <int N>
using Width = std::integral_constant<int, N>;

// N values in registers; one 16-byte load or store when N == kVecWidth.
template <class T, int N>
struct alignas(sizeof(T) * N) Array {
  T v[N];
  __device__ __forceinline__ T& operator[](int i) { return v[i]; }
  __device__ __forceinline__ const T& operator[](int i) const { return v[i]; }
};

// N elements from p (N > 1: p 16-byte aligned and contiguous), widened to acc_t.
template <int N, class acc_t, class scalar_t>
__device__ __forceinline__ Array<acc_t, N> load(const scalar_t* p) {
  const Array<scalar_t, N> raw = *reinterpret_cast<const Array<scalar_t, N>*>(p);
  Array<acc_t, N> out;
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = static_cast<acc_t>(raw[i]);
  return out;
}

// Rounds N acc_t values once to scalar_t and stores them at p (N > 1: 16-byte aligned).
template <int N, class scalar_t, class acc_t>
__device__ __forceinline__ void store(scalar_t* p, const Array<acc_t, N>& values) {
  Array<scalar_t, N> raw;
#pragma unroll
  for (int i = 0; i < N; ++i) raw[i] = static_cast<scalar_t>(values[i]);
  *reinterpret_cast<Array<scalar_t, N>*>(p) = raw;
}

// Calls body(c, Width<N>{}) for each chunk [c, c + N) of a row of `cols` columns that this lane
// owns: N = V over the row's whole vectors, then N = 1 over the rest, so a lane meets its
// columns in increasing order (online softmax relies on it for the argmax ties).
template <int V, class Body>
__device__ __forceinline__ void for_each_chunk(int64_t cols, int lane, int lanes, Body&& body) {
  int64_t done = 0;
  if constexpr (V > 1) {
    const int64_t vecs = cols / V;
    for (int64_t v = lane; v < vecs; v += lanes) body(v * V, Width<V>{});
    done = vecs * V;
  }
  for (int64_t c = done + lane; c < cols; c += lanes) body(c, Width<1>{});
}

// Team shape for rows of `cols` columns read `vec` elements at a time.
struct Teams {
  int lanes;    // threads per row, a power of two
  int threads;  // threads per block, a multiple of lanes
  int per_block() const { return threads / lanes; }
};

inline Teams teams_for(int64_t cols, int vec) {
  const int64_t wanted = (cols + vec * kVecsPerLane - 1) / (vec * kVecsPerLane);
  int lanes = 1;
  while (lanes < wanted && lanes < kMaxTeamLanes) lanes *= 2;
  return {lanes, std::max(lanes, kBlockThreads)};
}

// Whether every row of the 2-D tensor t can be read with 16-byte accesses of scalar_t:
// contiguous rows, each starting 16-byte aligned. Other layouts take the element-wise path.
template <class scalar_t>
bool rows_vectorizable(const at::Tensor& t) {
  constexpr int V = kVecWidth<scalar_t>;
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 && (t.size(1) <= 1 || t.stride(1) == 1) &&
         (t.size(0) <= 1 || t.stride(0) % V == 0);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launches kernel on `stream` and checks the launch.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), int64_t blocks, int threads, size_t shared_bytes, cudaStream_t stream,
            Args&&... args) {
  TORCH_CHECK(blocks <= INT_MAX, "rankmixup: the problem is too large for one kernel launch");
  kernel<<<static_cast<unsigned>(blocks), threads, shared_bytes, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace rankmixup::cuda
