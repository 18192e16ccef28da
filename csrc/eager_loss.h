// The eager front end of the loss (eager_loss.cpp), bound in the module `_C` (ops.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string_view>

namespace rankmixup {

// functional.loss_call for a call of plain tensors that its checks pass unchanged, on a device
// type allowed by on_cpu / on_cuda (those the calling backend name runs the compiled backend
// on): (loss, ce, rank); None for any other call, which is the Python path's to check and run.
// The options are LossOptions' fields, checked by the caller.
pybind11::object eager_loss(bool on_cpu, bool on_cuda, pybind11::handle logits, pybind11::handle mix_logits,
                            pybind11::handle targets, pybind11::handle lam, pybind11::handle index,
                            std::string_view mode, std::string_view score, double ce_weight, double alpha,
                            double margin, int64_t ignore_index, double label_smoothing, std::string_view reduction,
                            pybind11::handle weight);

}  // namespace rankmixup
