// The eager front end of the loss: what functional.loss_call does (check the tensors, normalise
// them, compute the relevance, run the loss op) for the common call, in one call from Python.
// At the paper's shapes the Python version of those steps cost more than half of the fused
// operator itself (tens of attribute reads and a second operator call, each a fraction of a
// microsecond); here they are a few comparisons.
//
// It never raises for bad input and never decides anything Python would decide otherwise: it
// takes only calls that the Python checks would pass unchanged (plain tensors of the dtypes,
// shapes and devices they accept, nothing to convert but a (K,) lam or a (K, B, C) mix_logits),
// and answers None to every other call, which then takes the checked Python path, whose
// messages name the argument at fault. The options arrive checked (functional.loss_options).
#include "eager_loss.h"

#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <cstdlib>
#include <optional>
#include <string_view>
#include <tuple>

#include "op_args.h"
#include "op_handles.h"
#include "python_call.h"

namespace rankmixup {
namespace {

namespace py = pybind11;
using at::Tensor;

// The tensor of a plain torch.Tensor (or nn.Parameter, which has no __torch_function__ of its
// own); none for a subclass, which must go through torch.ops, or anything else.
const Tensor* plain_tensor(py::handle object) {
  return THPVariable_CheckExact(object.ptr()) ? &THPVariable_Unpack(object.ptr()) : nullptr;
}

bool is_loss_dtype(at::ScalarType dtype) {  // _checks.FLOAT_DTYPES
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble;
}

// _checks.validation_requested's environment half: RANKMIXUP_VALIDATE set to anything but ""
// or "0". (os.environ writes through to the C environment, so both read the same value.)
bool validation_requested_by_environment() {
  const char* value = std::getenv("RANKMIXUP_VALIDATE");
  return value != nullptr && std::string_view(value) != "" && std::string_view(value) != "0";
}

}  // namespace

py::object eager_loss(bool on_cpu, bool on_cuda, py::handle logits_object, py::handle mix_logits_object,
                      py::handle targets_object, py::handle lam_object, py::handle index_object, std::string_view mode,
                      std::string_view score, double ce_weight, double alpha, double margin, int64_t ignore_index,
                      double label_smoothing, std::string_view reduction, py::handle weight_object) {
  const py::object not_taken = py::none();
  if (at::impl::torch_function_mode_enabled() || validation_requested_by_environment()) return not_taken;
  const Tensor* logits = plain_tensor(logits_object);
  const Tensor* mix_logits = plain_tensor(mix_logits_object);
  const Tensor* targets = plain_tensor(targets_object);
  const Tensor* lam = plain_tensor(lam_object);
  const Tensor* index = plain_tensor(index_object);
  const Tensor* weight = weight_object.is_none() ? nullptr : plain_tensor(weight_object);
  if (!logits || !mix_logits || !targets || !lam || !index || (!weight_object.is_none() && !weight)) return not_taken;

  // functional.check_loss_inputs, as far as it passes without converting anything.
  if (!is_loss_dtype(logits->scalar_type()) || logits->dim() != 2 || logits->numel() == 0) return not_taken;
  const at::Device device = logits->device();
  if (!(device.is_cpu() ? on_cpu : device.is_cuda() && on_cuda)) return not_taken;
  const int64_t batch = logits->size(0), classes = logits->size(1);
  const at::ScalarType acc = accumulation_type(logits->scalar_type());
  if (targets->scalar_type() != at::kLong || targets->dim() != 1 || targets->size(0) != batch) return not_taken;
  if (index->scalar_type() != at::kLong || index->dim() != 2 || index->size(0) == 0 || index->size(1) != batch) {
    return not_taken;
  }
  const int64_t num_mix = index->size(0);
  const bool lam_per_mix = lam->dim() == 1 && lam->size(0) == num_mix;
  if (lam->scalar_type() != acc || !(lam_per_mix || lam->sizes() == index->sizes())) return not_taken;
  const bool mix_stacked = mix_logits->dim() == 3 && mix_logits->size(0) == num_mix &&
                           mix_logits->size(1) == batch && mix_logits->size(2) == classes;
  const bool mix_flat = mix_logits->dim() == 2 && mix_logits->size(0) == num_mix * batch &&
                        mix_logits->size(1) == classes;
  if (mix_logits->scalar_type() != logits->scalar_type() || !(mix_flat || mix_stacked)) return not_taken;
  if (mix_logits->device() != device || targets->device() != device || lam->device() != device ||
      index->device() != device) {
    return not_taken;
  }
  // functional.class_weight, likewise.
  if (weight && (weight->scalar_type() != acc || weight->dim() != 1 || weight->size(0) != classes ||
                 weight->device() != device)) {
    return not_taken;
  }

  const auto [loss, ce, rank] = as_python_call([&] {
    // lam is sampled data, and class weights are data: neither is differentiated (SPEC §6).
    Tensor pairing_lam = lam->requires_grad() ? lam->detach() : *lam;
    if (lam_per_mix) pairing_lam = pairing_lam.unsqueeze(1).expand({num_mix, batch});
    const Tensor rel = relevance_op().call(*targets, pairing_lam, *index);
    const ClassWeight class_weight = weight ? ClassWeight(weight->detach().contiguous()) : std::nullopt;
    const Tensor flat_mix_logits = mix_stacked ? mix_logits->reshape({num_mix * batch, classes}) : *mix_logits;
    const auto outputs = loss_op().call(*logits, flat_mix_logits, *targets, rel, mode, score, ce_weight, alpha, margin,
                                        ignore_index, label_smoothing, reduction, class_weight);
    return std::make_tuple(std::get<0>(outputs), std::get<1>(outputs), std::get<2>(outputs));
  });
  return py::make_tuple(loss, ce, rank);
}

}  // namespace rankmixup
