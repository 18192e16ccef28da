// Softmax statistics of one logit row: everything the losses need to know about a row, in
// three numbers. conf = max softmax = exp(max - max) / sumexp = 1 / sumexp, and the softmax
// is exp(z - max) / sumexp: computed so, never as exp(z - lse), whose float log-sum-exp
// max + log(sumexp) loses eps * |max| (see pack_row in sample_loss.h).
#pragma once

#include <cstdint>
#include <limits>

#include "rankmixup/host_device.h"

namespace rankmixup {

template <class T>
struct RowStats {
  T max = -std::numeric_limits<T>::infinity();
  int64_t argmax = 0;  // lowest index holding max (SPEC §4)
  T sumexp = T(0);     // sum_c exp(z_c - max)

  RANKMIXUP_HD T confidence() const { return T(1) / sumexp; }

  // Online update with element z at column c; columns must arrive in increasing order.
  RANKMIXUP_HD void push(T z, int64_t c) {
    if (z > max) {
      sumexp = sumexp * exp_(max - z) + T(1);
      max = z;
      argmax = c;
    } else if (z > -std::numeric_limits<T>::infinity()) {
      // A -inf logit adds exp(-inf) = 0; skipped, since while max is -inf too, z - max is NaN.
      // (A NaN is skipped as well: the row's logit sum poisons it, see poisons_row.)
      sumexp += exp_(z - max);
    }
  }

  // A row whose logits are not all finite: every statistic becomes NaN so that the loss and
  // the gradients of its sample are NaN too (SPEC §9), whatever branch the math takes.
  RANKMIXUP_HD void poison() {
    max = std::numeric_limits<T>::quiet_NaN();
    sumexp = max;
  }
};

// Whether a row with this logit sum and max poisons its sample (SPEC §9): it holds a NaN or a
// +inf, or nothing but -inf. A -inf logit alone does not: it is a masked class, of probability
// 0, as in torch.nn.functional.cross_entropy.
template <class T>
RANKMIXUP_HD bool poisons_row(T logit_sum, T max) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  return logit_sum != logit_sum || logit_sum == kInf || max == -kInf;
}

// Statistics of the concatenation of two parts of a row (online softmax); ties in the max go
// to the lower column, so the result does not depend on how the row was split.
template <class T>
RANKMIXUP_HD RowStats<T> merge(const RowStats<T>& a, const RowStats<T>& b) {
  if (b.sumexp == T(0)) return a;
  if (a.sumexp == T(0)) return b;
  const bool take_b = b.max > a.max || (b.max == a.max && b.argmax < a.argmax);
  RowStats<T> out = take_b ? b : a;
  const RowStats<T>& other = take_b ? a : b;
  out.sumexp += other.sumexp * exp_(other.max - out.max);
  return out;
}

}  // namespace rankmixup
