// The LinearSigmoid ops called below autograd from Python in one step. LinearSigmoidFunction runs its
// forward and (without create_graph) its backward with grad mode off, where the Python autograd kernel
// that register_autograd puts on each op would only redispatch; calling through torch.ops under
// torch._C._AutoDispatchBelowAutograd() costs a Python context manager and the OpOverload's argument
// parsing on top of the dispatcher. At (64, 256 -> 256) those few microseconds per call are a visible
// share of the layer (README, Performance), so the eager path comes here instead. The dispatcher still
// picks the backend (CPU, CUDA) and autocast still applies: only the autograd keys are skipped.
#include "eager_calls.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>

namespace torch_manualbp {

at::Tensor linear_sigmoid_forward_below_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("torch_manualbp::linear_sigmoid_forward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_sigmoid_backward_below_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    const std::optional<std::vector<int64_t>>& bias_sizes, std::array<bool, 3> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("torch_manualbp::linear_sigmoid_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::OptionalSymIntArrayRef,
              std::array<bool, 3>)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::optional<c10::SymIntArrayRef> sizes;
  if (bias_sizes.has_value()) sizes = c10::fromIntArrayRefSlow(*bias_sizes);
  return op.call(grad_output, input, weight, output, sizes, output_mask);
}

}  // namespace torch_manualbp
