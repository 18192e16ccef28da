// Deterministic reductions for the CUDA kernels: every sum is taken in a fixed order (xor
// butterflies inside a warp, then warp results in warp order), so the same inputs give the
// same bits on every run — no floating-point atomics anywhere.
#pragma once

#include <cstdint>

namespace rankmixup::cuda {

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kWarpSize = 32;

__device__ __forceinline__ float shuffle_xor(float x, int mask) { return __shfl_xor_sync(kFullWarp, x, mask); }
__device__ __forceinline__ double shuffle_xor(double x, int mask) { return __shfl_xor_sync(kFullWarp, x, mask); }
__device__ __forceinline__ int64_t shuffle_xor(int64_t x, int mask) {
  return __shfl_xor_sync(kFullWarp, static_cast<long long>(x), mask);
}

// Sum over the aligned groups of `width` lanes (a power of two, at most 32) of a warp; every
// lane of the group gets the same bits (a + b == b + a in floating point). All 32 lanes of the
// warp must call it.
template <class T>
__device__ __forceinline__ T group_sum(T x, int width) {
  for (int mask = 1; mask < width; mask <<= 1) x += shuffle_xor(x, mask);
  return x;
}

// Sum over the block, complete in warp 0 (thread 0 included). The block size must be a
// multiple of 32 and every thread must call it; `scratch` holds 32 T in shared memory.
template <class T>
__device__ T block_sum(T x, T* scratch) {
  x = group_sum(x, kWarpSize);
  const int warp = threadIdx.x / kWarpSize;
  if (threadIdx.x % kWarpSize == 0) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = threadIdx.x < blockDim.x / kWarpSize ? scratch[threadIdx.x] : T(0);
    x = group_sum(x, kWarpSize);
  }
  return x;
}

}  // namespace rankmixup::cuda
