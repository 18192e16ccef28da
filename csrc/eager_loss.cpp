// The eager front ends of the loss: what functional.loss_call does (check the tensors, normalise
// them, run the loss op) and what the drop-in classes' forward does (the same with the relevance
// read off mixed soft targets), for the common call, in one call from Python. At the paper's
// shapes the Python versions of those steps cost about half of the fused operator itself (tens
// of attribute reads, each a fraction of a microsecond); here they are a few comparisons.
//
// They never raise for bad input and never decide anything Python would decide otherwise: they
// take only calls that the Python checks pass unchanged (plain tensors of the dtypes, shapes and
// devices those accept, nothing to convert but a (K,) lam or a (K, B, C) mix_logits), and answer
// None to every other call, which then takes the checked Python path, whose messages name the
// argument at fault. The options arrive checked (functional.loss_options); a call whose values are
// to be validated is not taken either (only the Python path reads values).
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

// Whether a front end may run at all: no __torch_function__ mode to honour (the direct
// operator calls below would skip it), logits that it serves, on a device type it serves.
bool served(const Tensor* logits, bool on_cpu, bool on_cuda) {
  if (at::impl::torch_function_mode_enabled() || !logits) return false;
  if (!is_loss_dtype(logits->scalar_type()) || logits->dim() != 2 || logits->numel() == 0) return false;
  const at::Device device = logits->device();
  return device.is_cpu() ? on_cpu : device.is_cuda() && on_cuda;
}

// The call's checked options, a LossOptions (a NamedTuple holding the loss schema's option
// arguments in order, then the class weights: rankmixup_ops/_types.py), parsed as the loss op
// parses its arguments. Read with the GIL held.
LossOptions scalar_options(const py::tuple& o) {
  HANDLE_TH_ERRORS
  size_t field = 0;  // braced initialisers run in order
#define RANKMIXUP_OPTION_FROM_TUPLE(type, name) \
  OptionArg<type>::parse(o[field++].cast<OptionArg<type>::Arg>(), #name),
  return LossOptions{RANKMIXUP_LOSS_OPTIONS(RANKMIXUP_OPTION_FROM_TUPLE)};
#undef RANKMIXUP_OPTION_FROM_TUPLE
  END_HANDLE_TH_ERRORS_PYBIND
}
constexpr size_t kClassWeightsField = kLossOptionCount;  // the one tensor, last

using LossParts = std::tuple<Tensor, Tensor, Tensor>;

// The loss op over checked tensors: (loss, ce, rank). Called inside as_python_call.
LossParts loss_parts(const Tensor& logits, const Tensor& mix_logits, const Tensor& targets, const Tensor& lam,
                     const MixPartners& index, const ClassWeight& class_weights, const LossOptions& options) {
  const auto out = call_with_options(loss_op(), logits, mix_logits, targets, lam, index, class_weights, options);
  return {std::get<0>(out), std::get<1>(out), std::get<2>(out)};
}

py::tuple as_python(const LossParts& parts) {
  return py::make_tuple(std::get<0>(parts), std::get<1>(parts), std::get<2>(parts));
}

// tuple.__new__'s own check, made before any work: anything but a tuple subclass would be built
// with a tuple's layout.
void check_result_type(py::handle result_type) {
  if (!PyType_Check(result_type.ptr()) ||
      !PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(result_type.ptr()), &PyTuple_Type)) {
    throw py::type_error("eager_loss: result_type must be a subclass of tuple");
  }
}

// `parts` as an instance of the tuple subclass `result_type` (a NamedTuple; check_result_type
// passed), made as tuple.__new__(result_type, parts) makes it: without the Python frame of the
// NamedTuple's own __new__, one of the few left in a call.
py::object as_instance(py::handle result_type, const LossParts& parts) {
  const py::tuple args = py::make_tuple(as_python(parts));
  PyObject* instance = PyTuple_Type.tp_new(reinterpret_cast<PyTypeObject*>(result_type.ptr()), args.ptr(), nullptr);
  if (!instance) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(instance);
}

// check.validation_requested (rankmixup_ops/_checks.py): validate=True, or RANKMIXUP_VALIDATE set
// to anything but "" or "0". os.environ writes through to the C environment, so getenv sees
// what the Python path would read, for a fraction of os.environ.get's cost.
bool validation_requested(py::handle validate) {
  if (validate.ptr() != Py_False) return true;  // True, or not a bool: the checked path says which
  const char* value = std::getenv("RANKMIXUP_VALIDATE");
  return value && *value && std::string_view(value) != "0";
}

}  // namespace

py::object eager_loss(py::handle result_type, bool on_cpu, bool on_cuda, py::handle logits_object,
                      py::handle mix_logits_object, py::handle targets_object, py::handle lam_object,
                      py::handle index_object, const py::tuple& options, py::handle validate) {
  check_result_type(result_type);
  const py::object not_taken = py::none();
  const Tensor* logits = plain_tensor(logits_object);
  if (validation_requested(validate) || !served(logits, on_cpu, on_cuda)) return not_taken;
  const py::handle class_weights_object = options[kClassWeightsField];
  const Tensor* mix_logits = plain_tensor(mix_logits_object);
  const Tensor* targets = plain_tensor(targets_object);
  const Tensor* lam = plain_tensor(lam_object);
  const Tensor* index = plain_tensor(index_object);
  const bool weighted = !class_weights_object.is_none();
  const Tensor* class_weights = weighted ? plain_tensor(class_weights_object) : nullptr;
  if (!mix_logits || !targets || !lam || !index || (weighted && !class_weights)) return not_taken;

  // functional.check_loss_inputs, as far as it passes without converting anything.
  const at::Device device = logits->device();
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
  if (class_weights && (class_weights->scalar_type() != acc || class_weights->dim() != 1 ||
                        class_weights->size(0) != classes || class_weights->device() != device)) {
    return not_taken;
  }

  const LossOptions parsed = scalar_options(options);
  return as_instance(result_type, as_python_call([&] {
    // lam is sampled data, and class weights are data: neither is differentiated (SPEC §6).
    Tensor pairing_lam = lam->requires_grad() ? lam->detach() : *lam;
    if (lam_per_mix) pairing_lam = pairing_lam.unsqueeze(1).expand({num_mix, batch});
    return loss_parts(*logits, mix_stacked ? mix_logits->reshape({num_mix * batch, classes}) : *mix_logits, *targets,
                      pairing_lam, *index,
                      class_weights ? ClassWeight(class_weights->detach().contiguous()) : std::nullopt, parsed);
  }));
}

py::object eager_compat_loss(bool on_cpu, bool on_cuda, py::handle inputs_object, py::handle targets_object,
                             py::handle mixup_object, py::handle target_re_object, py::handle lam_object,
                             py::handle num_classes_object, const py::tuple& options) {
  const py::object not_taken = py::none();
  const Tensor* inputs = plain_tensor(inputs_object);
  if (!served(inputs, on_cpu, on_cuda)) return not_taken;
  const Tensor* targets = plain_tensor(targets_object);
  const Tensor* mixup = plain_tensor(mixup_object);
  const Tensor* target_re = plain_tensor(target_re_object);
  if (!targets || !mixup || !target_re || !PyLong_CheckExact(num_classes_object.ptr())) return not_taken;
  const int64_t num_classes = num_classes_object.cast<int64_t>();

  // compat._RankMixupCompat.forward's checks, as far as they pass without converting anything.
  const at::Device device = inputs->device();
  const int64_t batch = inputs->size(0);
  if (inputs->size(1) != num_classes) return not_taken;
  if (targets->scalar_type() != at::kLong || targets->dim() != 1 || targets->size(0) != batch) return not_taken;
  if (mixup->scalar_type() != inputs->scalar_type() || mixup->dim() != 2 || mixup->size(0) == 0 ||
      mixup->size(0) % batch != 0 || mixup->size(1) != num_classes) {
    return not_taken;
  }
  if (!is_loss_dtype(target_re->scalar_type()) || target_re->sizes() != mixup->sizes()) return not_taken;
  if (targets->device() != device || mixup->device() != device || target_re->device() != device) return not_taken;
  const int64_t num_mix = mixup->size(0) / batch;
  // lam: only its count is used, and a tensor's must be K or K*B (anything else is checked there;
  // a subclass's count is its own business).
  if (THPVariable_Check(lam_object.ptr())) {
    const Tensor* lam = plain_tensor(lam_object);
    if (!lam || (lam->numel() != num_mix && lam->numel() != num_mix * batch)) return not_taken;
  }

  const at::ScalarType acc = accumulation_type(inputs->scalar_type());
  const LossOptions parsed = scalar_options(options);
  return as_python(as_python_call([&] {
    const Tensor rel = soft_relevance_op().call(target_re->detach(), num_mix, acc);
    return loss_parts(*inputs, *mixup, *targets, rel, std::nullopt, std::nullopt, parsed);
  }));
}

}  // namespace rankmixup
