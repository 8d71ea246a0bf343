// Direct calls of the LinearSigmoid ops below autograd, for the eager path of LinearSigmoidFunction
// (torch_manualbp/layers/linear_sigmoid.py): bound in torch_manualbp._C by csrc/ops.cpp.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace torch_manualbp {

// torch.ops.torch_manualbp.linear_sigmoid_forward with the autograd keys excluded: the backend kernel
// (CPU or CUDA) through the dispatcher, without the Python autograd kernel of register_autograd.
at::Tensor linear_sigmoid_forward_below_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

// torch.ops.torch_manualbp.linear_sigmoid_backward, the same way.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_sigmoid_backward_below_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    const std::optional<std::vector<int64_t>>& bias_sizes, std::array<bool, 3> output_mask);

}  // namespace torch_manualbp
