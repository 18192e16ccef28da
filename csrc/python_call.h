// How the module's entry points (ops.cpp, eager_loss.cpp) run their operator calls from Python.
#pragma once

#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>

namespace rankmixup {

// Runs an operator call as ATen's Python bindings run theirs: without the GIL while it runs (the
// dispatcher takes it back for any Python it calls), its errors raised as torch.ops raises them
// (the same Python exception types, no C++ backtrace in the message), its warnings as Python
// warnings.
template <class Call>
auto as_python_call(Call call) {
  HANDLE_TH_ERRORS
  pybind11::gil_scoped_release no_gil;
  return call();
  END_HANDLE_TH_ERRORS_PYBIND
}

}  // namespace rankmixup
