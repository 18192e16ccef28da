// Portability shims so the math headers compile unchanged for the host (C++) and for CUDA
// device code (nvcc). Nothing here includes torch.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RANKMIXUP_HD __host__ __device__ __forceinline__
#else
#define RANKMIXUP_HD inline
#endif

namespace rankmixup {

// ::expf/::logf/::log2f and their double twins exist with these names on both sides of nvcc;
// std:: overloads are not guaranteed in device code.
RANKMIXUP_HD float exp_(float x) { return ::expf(x); }
RANKMIXUP_HD double exp_(double x) { return ::exp(x); }
RANKMIXUP_HD float log_(float x) { return ::logf(x); }
RANKMIXUP_HD double log_(double x) { return ::log(x); }
RANKMIXUP_HD float log2_(float x) { return ::log2f(x); }
RANKMIXUP_HD double log2_(double x) { return ::log2(x); }

// relu that lets NaN through, so a non-finite logit poisons the loss instead of vanishing.
template <class T>
RANKMIXUP_HD T relu_nan(T x) {
  return x > T(0) || x != x ? x : T(0);
}

}  // namespace rankmixup
