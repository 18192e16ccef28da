// The eager front ends of the loss (eager_loss.cpp), bound in the module `_C` (ops.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace rankmixup {

// functional.loss_call for a call of plain tensors that its checks pass unchanged, on a device
// type allowed by on_cpu / on_cuda (those on which the calling backend name runs the compiled
// backend), `options` a checked LossOptions, values not to be validated (`validate` False and
// RANKMIXUP_VALIDATE unset): (loss, ce, rank) as a `result_type` (LossOutput). None for any other
// call, which is the Python path's to check and run.
pybind11::object eager_loss(pybind11::handle result_type, bool on_cpu, bool on_cuda, pybind11::handle logits,
                            pybind11::handle mix_logits, pybind11::handle targets, pybind11::handle lam,
                            pybind11::handle index, const pybind11::tuple& options, pybind11::handle validate);

// The drop-in classes' forward (compat._RankMixupCompat.forward) likewise: the loss from mixed
// soft targets `target_re`, the relevance read off them; None where forward must check.
pybind11::object eager_compat_loss(bool on_cpu, bool on_cuda, pybind11::handle inputs, pybind11::handle targets,
                                   pybind11::handle mixup, pybind11::handle target_re, pybind11::handle lam,
                                   pybind11::handle num_classes, const pybind11::tuple& options);

}  // namespace rankmixup
