#include "linear_sigmoid_args.h"

#include <ATen/ExpandUtils.h>

#include "checks.h"

namespace torch_manualbp {
namespace {

constexpr const char* kForward = "linear_sigmoid";
constexpr const char* kBackward = "linear_sigmoid_backward";

LinearSigmoidShape shape_of(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(
      input.dim() >= 1, op, ": expected input of shape (*, in_features) with at least 1 dimension, but got input of shape ",
      input.sizes());
  TORCH_CHECK(
      weight.dim() == 2, op, ": expected weight of shape (out_features, in_features) with 2 dimensions, but got weight of shape ",
      weight.sizes());
  TORCH_CHECK(
      input.size(-1) == weight.size(1), op, ": expected input.size(-1) to equal weight.size(1) (in_features = ",
      weight.size(1), "), but got input of shape ", input.sizes(), " and weight of shape ", weight.sizes());
  LinearSigmoidShape shape;
  shape.in_features = weight.size(1);
  shape.out_features = weight.size(0);
  shape.output_sizes = input.sizes().vec();
  shape.output_sizes.back() = shape.out_features;
  shape.rows = 1;
  for (size_t d = 0; d + 1 < shape.output_sizes.size(); ++d) shape.rows *= shape.output_sizes[d];
  return shape;
}

void check_bias_broadcasts(const char* op, at::IntArrayRef bias_sizes, const LinearSigmoidShape& shape) {
  const at::IntArrayRef out(shape.output_sizes);
  bool ok = bias_sizes.size() <= out.size();
  for (size_t i = 0; ok && i < bias_sizes.size(); ++i) {
    const int64_t b = bias_sizes[bias_sizes.size() - 1 - i];
    ok = b == 1 || b == out[out.size() - 1 - i];
  }
  TORCH_CHECK(
      ok, op, ": expected bias of shape (out_features,) or a shape that broadcasts to the output shape ", out,
      ", but got bias of shape ", bias_sizes);
}

}  // namespace

LinearSigmoidShape check_linear_sigmoid_forward(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_floating(kForward, "input", input);
  check_same_dtype(kForward, "weight", weight, "input", input);
  check_same_device(kForward, "weight", weight, "input", input);
  LinearSigmoidShape shape = shape_of(kForward, input, weight);
  if (bias.has_value() && bias->defined()) {
    check_same_dtype(kForward, "bias", *bias, "input", input);
    check_same_device(kForward, "bias", *bias, "input", input);
    check_bias_broadcasts(kForward, bias->sizes(), shape);
  }
  return shape;
}

LinearSigmoidShape check_linear_sigmoid_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    at::OptionalIntArrayRef bias_sizes) {
  check_floating(kBackward, "input", input);
  auto check_like_input = [&](const char* name, const at::Tensor& t) {
    check_same_dtype(kBackward, name, t, "input", input);
    check_same_device(kBackward, name, t, "input", input);
  };
  check_like_input("weight", weight);
  check_like_input("output", output);
  check_like_input("grad_output", grad_output);
  LinearSigmoidShape shape = shape_of(kBackward, input, weight);
  check_sizes(kBackward, "output", output, shape.output_sizes);
  TORCH_CHECK(
      at::is_expandable_to(grad_output.sizes(), shape.output_sizes), kBackward,
      ": expected grad_output of a shape that broadcasts to the output shape ", at::IntArrayRef(shape.output_sizes),
      ", but got grad_output of shape ", grad_output.sizes());
  if (bias_sizes.has_value()) check_bias_broadcasts(kBackward, *bias_sizes, shape);
  return shape;
}

bool bias_is_row_vector(at::IntArrayRef bias_sizes, int64_t out_features) {
  if (bias_sizes.empty() || bias_sizes.back() != out_features) return false;
  for (size_t d = 0; d + 1 < bias_sizes.size(); ++d) {
    if (bias_sizes[d] != 1) return false;
  }
  return true;
}

}  // namespace torch_manualbp
