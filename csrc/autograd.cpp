// Autograd for the ops in ops.cpp, registered once for every device (the Autograd alias key):
// forward redispatches below autograd to the device's kernel (cpu/ or cuda/), backward calls the
// device's backward op (or, on the CPU, scales the gradient its forward wrote); `soft_relevance`
// is declared not differentiable. In C++ rather than with Python's torch.library.register_autograd,
// whose Python node cost tens of microseconds per call (measured at the paper's shapes: more than
// the fused kernels themselves). torch.compile
// traces through it like any C++ autograd op, the ops' fake implementations (compiled.py)
// answering for the kernels.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <tuple>
#include <utility>

#include "kernels.h"
#include "op_args.h"
#include "op_handles.h"

namespace rankmixup {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Under create_graph: the loss's backward ops have no derivative of their own, so its gradients
// would come back with no path to the logits, and a second derivative through them (a gradient
// penalty) would silently leave the loss's part out. Instead they come back hanging off an error
// node (torch's DelayedError, the one @once_differentiable builds) whose backward raises; but
// always (not only when the incoming gradient requires grad: a scalar loss's is a constant 1),
// and with edges to the logits and the incoming gradient themselves, so that a derivative taken
// with respect to anything upstream of them reaches it (an error node on detached leaves would
// be pruned from that backward). Its outputs share the gradients' storage without being views,
// so they can be modified in place. triton/loss.py's _differentiable_once does the same.
constexpr const char* kNoSecondDerivative =
    "rankmixup_ops: the loss is differentiable once; a derivative of its gradient (after "
    "create_graph=True) is not implemented on this backend: backend='reference' has one";

std::pair<Tensor, Tensor> differentiable_once(const Tensor& grad_logits, const Tensor& grad_mix,
                                              const Tensor& logits, const Tensor& mix_logits,
                                              const Tensor& grad_loss) {
  const variable_list inputs{grad_logits, grad_mix, logits, mix_logits, grad_loss};
  const variable_list out =
      std::make_shared<torch::autograd::DelayedError>(kNoSecondDerivative, inputs.size())->apply(variable_list(inputs));
  return {out[0], out[1]};
}

// Differentiable in logits and mix_logits; the parts and the per-row records are not, and lam is
// sampled data (SPEC §6), a constant of the loss.
//
// On the CPU, for float32/float64 logits, when a gradient will be wanted, the forward runs
// loss_with_grad, which writes the gradient (for grad_output = 1) from the exps it computes
// anyway: the CPU kernels are bound by the exp, and this computes one per logit instead of two.
// Those buffers, kept until the backward, cost two logits-sized tensors of memory. The first
// backward takes them over and scales them in place (scale_grads_); a second one
// (retain_graph=True) finds them gone and runs the loss_backward op from the saved logits and
// row records, as every other device does. They live in saved_data, not among the saved
// tensors, so saved-tensor hooks (checkpointing, offloading to the CPU) do not see them.
class LossFunction : public torch::autograd::Function<LossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& logits, const Tensor& mix_logits,
                               const Tensor& targets, const Tensor& lam, const MixPartners& index,
                               const ClassWeight& weight, const LossOptions& options, bool grad_in_forward) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor loss, ce, rank, row_coefs, row_argmax;
    if (grad_in_forward) {
      Tensor grad_logits, grad_mix;
      std::tie(loss, ce, rank, row_coefs, row_argmax, grad_logits, grad_mix) =
          call_with_options(loss_with_grad_op(), logits, mix_logits, targets, lam, index, weight, options);
      ctx->saved_data[kGradLogits] = grad_logits;
      ctx->saved_data[kGradMix] = grad_mix;
    } else {
      std::tie(loss, ce, rank, row_coefs, row_argmax) =
          call_with_options(loss_op(), logits, mix_logits, targets, lam, index, weight, options);
    }
    ctx->mark_non_differentiable({ce, rank, row_coefs, row_argmax});
    // The four non-differentiable outputs never carry a gradient: spare autograd filling a
    // tensor of zeros for each of them on every backward.
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({logits, mix_logits, targets, row_coefs, row_argmax, weight.value_or(Tensor())});
    ctx->saved_data["ignore_index"] = options.ignore_index;
    return {loss, ce, rank, row_coefs, row_argmax};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(8);  // one per input of forward; only the logits are differentiable
    if (!grads[0].defined()) return out;
    const variable_list saved = ctx->get_saved_variables();
    const int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    // With create_graph (grad mode on here) the gradient is recomputed by loss_backward rather
    // than scaled in place in a graph being recorded; neither has a derivative of its own.
    if (ctx->saved_data.count(kGradLogits) != 0 && !at::GradMode::is_enabled()) {
      // Taken out of ctx, so that nothing else holds them while they are scaled in place.
      const Tensor grad_logits = ctx->saved_data[kGradLogits].toTensor();
      const Tensor grad_mix = ctx->saved_data[kGradMix].toTensor();
      ctx->saved_data.erase(kGradLogits);
      ctx->saved_data.erase(kGradMix);
      scale_grads_op().call(grad_logits, grad_mix, grads[0], saved[2], ignore_index);
      out[0] = grad_logits;
      out[1] = grad_mix;
      return out;
    }
    const ClassWeight weight = saved[5].defined() ? ClassWeight(saved[5]) : std::nullopt;
    std::tie(out[0], out[1]) =
        loss_backward_op().call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], ignore_index, weight);
    if (at::GradMode::is_enabled()) {
      std::tie(out[0], out[1]) = differentiable_once(out[0], out[1], saved[0], saved[1], grads[0]);
    }
    return out;
  }

 private:
  static constexpr const char* kGradLogits = "grad_logits";
  static constexpr const char* kGradMix = "grad_mix_logits";
};

// Differentiable in x (the usual case) and in lam (rare: lam is sampled, not learned).
class MixFunction : public torch::autograd::Function<MixFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& lam, const Tensor& index) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({lam.requires_grad() ? x : Tensor(), lam, index});
    return mix_op().call(x, lam, index);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &lam = saved[1], &index = saved[2];
    const Tensor& grad = grads[0];
    Tensor grad_x, grad_lam;
    if (ctx->needs_input_grad(0)) grad_x = mix_backward_op().call(grad, lam, index);
    if (ctx->needs_input_grad(1)) {
      // d out[k*B+b] / d lam[k,b] = x[b] - x[index[k,b]], summed against grad over the features.
      const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      const int64_t num_mix = index.size(0), batch = index.size(1);
      const Tensor partners = x.index_select(0, index.reshape(-1)).reshape({num_mix, batch, -1});
      const Tensor diff = (x.reshape({1, batch, -1}) - partners).to(acc);
      grad_lam = (diff * grad.to(acc).reshape({num_mix, batch, -1})).sum(-1).to(lam.scalar_type());
    }
    return {grad_x, grad_lam, Tensor()};
  }
};

// An op linear in its first argument, grad or x, whose derivative there is another op: its
// adjoint (paste_boxes and paste_boxes_backward are each other's, and so are mix_backward and
// mix, lam fixed). Differentiable to any order in that argument; the second is boxes (integers)
// or lam, the third index (integers).
template <auto op, auto adjoint>
class AdjointPairFunction : public torch::autograd::Function<AdjointPairFunction<op, adjoint>> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& coefficients, const Tensor& index) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({coefficients, index});
    return op().call(input, coefficients, index);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // mix's backward is not differentiated in lam: say so rather than return a zero.
    TORCH_CHECK(!ctx->needs_input_grad(1),
                "rankmixup: the derivative of mix's backward with respect to lam is not implemented");
    const variable_list saved = ctx->get_saved_variables();
    return {adjoint().call(grads[0], saved[0], saved[1]), Tensor(), Tensor()};
  }
};

using PasteBoxesFunction = AdjointPairFunction<&paste_boxes_op, &paste_boxes_backward_op>;
using PasteBoxesBackwardFunction = AdjointPairFunction<&paste_boxes_backward_op, &paste_boxes_op>;
using MixBackwardFunction = AdjointPairFunction<&mix_backward_op, &mix_op>;

}  // namespace

// The operator kernels, registered in ops.cpp (declared in kernels.h).

LossOutputs loss_autograd(const Tensor& logits, const Tensor& mix_logits, const Tensor& targets, const Tensor& lam,
                          const MixPartners& index, const ClassWeight& weight, const LossOptions& options) {
  // Not for float16/bfloat16 logits: their forward gradients would be float32 buffers twice the
  // logits' size, kept until the backward; narrow dtypes are chosen to save memory.
  const bool wide = logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble;
  const bool grad_in_forward = logits.device().is_cpu() && wide && at::GradMode::is_enabled() &&
                               (logits.requires_grad() || mix_logits.requires_grad());
  const variable_list out =
      LossFunction::apply(logits, mix_logits, targets, lam, index, weight, options, grad_in_forward);
  return {out[0], out[1], out[2], out[3], out[4]};
}

Tensor mix_autograd(const Tensor& x, const Tensor& lam, const Tensor& index) {
  return MixFunction::apply(x, lam, index);
}

Tensor mix_backward_autograd(const Tensor& grad, const Tensor& lam, const Tensor& index) {
  return MixBackwardFunction::apply(grad, lam, index);
}

Tensor paste_boxes_autograd(const Tensor& x, const Tensor& boxes, const Tensor& index) {
  return PasteBoxesFunction::apply(x, boxes, index);
}

Tensor paste_boxes_backward_autograd(const Tensor& grad, const Tensor& boxes, const Tensor& index) {
  return PasteBoxesBackwardFunction::apply(grad, boxes, index);
}

// A relevance read off (differentiable or not) soft targets is a constant of the loss.
Tensor soft_relevance_autograd(const Tensor& soft_targets, int64_t num_mix, at::ScalarType dtype) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return soft_relevance_op().call(soft_targets, num_mix, dtype);
}

}  // namespace rankmixup
