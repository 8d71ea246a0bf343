// Argument checks and shapes of the LinearSigmoid ops, shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace torch_manualbp {

// input (*, in_features), weight (out_features, in_features), output (*, out_features) seen as a
// (rows, out_features) matrix.
struct LinearSigmoidShape {
  int64_t rows;
  int64_t in_features;
  int64_t out_features;
  std::vector<int64_t> output_sizes;
};

// Checks input, weight and bias (dtypes, devices, ranks, in_features, bias broadcast) and returns the shapes.
LinearSigmoidShape check_linear_sigmoid_forward(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

// The backward's own checks: the forward's, plus grad_output/output against the output shape.
LinearSigmoidShape check_linear_sigmoid_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    at::OptionalIntArrayRef bias_sizes);

// True when a bias of `bias_sizes` is one row repeated over the output's rows: (out,), (1, out), ...
// Its gradient is then a column sum that the backward pass fuses into its elementwise loop.
bool bias_is_row_vector(at::IntArrayRef bias_sizes, int64_t out_features);

}  // namespace torch_manualbp
