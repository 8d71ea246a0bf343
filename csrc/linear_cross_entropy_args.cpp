#include "linear_cross_entropy_args.h"

#include <ATen/ATen.h>

#include <cmath>

#include "checks.h"

namespace torch_manualbp {
namespace {

constexpr const char* kForward = "linear_cross_entropy";
constexpr const char* kBackward = "linear_cross_entropy_backward";

bool is_floating(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf;
}

LinearCrossEntropyShape check_common(
    const char* op, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const LinearCrossEntropyOptions& options) {
  check_floating(op, "input", input);
  TORCH_CHECK(
      input.dim() >= 1, op, ": expected input of shape (*, in_features) with at least 1 dimension, but got input of shape ",
      input.sizes());
  check_same_device(op, "linear_weight", linear_weight, "input", input);
  check_same_dtype(op, "linear_weight", linear_weight, "input", input);
  TORCH_CHECK(
      linear_weight.dim() == 2, op,
      ": expected linear_weight of shape (num_classes, in_features) with 2 dimensions, but got linear_weight of shape ",
      linear_weight.sizes());
  TORCH_CHECK(
      input.size(-1) == linear_weight.size(1), op, ": expected input.size(-1) to equal linear_weight.size(1) (in_features = ",
      linear_weight.size(1), "), but got input of shape ", input.sizes(), " and linear_weight of shape ",
      linear_weight.sizes());

  LinearCrossEntropyShape shape;
  shape.in_features = linear_weight.size(1);
  shape.classes = linear_weight.size(0);
  shape.token_sizes = input.sizes().vec();
  shape.token_sizes.pop_back();
  shape.tokens = 1;
  for (int64_t s : shape.token_sizes) shape.tokens *= s;
  if (options.reduction == LossReduction::kNone) shape.loss_sizes = shape.token_sizes;

  if (linear_bias.has_value() && linear_bias->defined()) {
    check_same_device(op, "linear_bias", *linear_bias, "input", input);
    check_same_dtype(op, "linear_bias", *linear_bias, "input", input);
    TORCH_CHECK(
        linear_bias->dim() == 1 && linear_bias->size(0) == shape.classes, op,
        ": expected linear_bias of shape (num_classes,) = (", shape.classes, ",), but got linear_bias of shape ",
        linear_bias->sizes());
  }

  check_same_device(op, "target", target, "input", input);
  std::vector<int64_t> logits_sizes = shape.token_sizes;
  logits_sizes.push_back(shape.classes);
  // As F.cross_entropy of the logits: a target of the logits' exact shape holds class probabilities.
  if (target.sizes() == at::IntArrayRef(logits_sizes)) {
    shape.target_kind = TargetKind::kProbability;
    TORCH_CHECK(
        is_floating(target.scalar_type()), op,
        ": expected target (class probabilities: the logits' shape (*, num_classes)) of a floating dtype, but got "
        "target of dtype ", target.scalar_type(), " and shape ", target.sizes());
    check_same_dtype(op, "target (class probabilities)", target, "input", input);
    TORCH_CHECK(
        options.ignore_index < 0, op,
        ": ignore_index is not supported for class-probability targets; expected a negative ignore_index (e.g. the "
        "default -100), but got ignore_index=", options.ignore_index);
  } else {
    shape.target_kind = TargetKind::kClassIndex;
    TORCH_CHECK(
        target.scalar_type() == at::kLong || target.scalar_type() == at::kByte, op,
        ": expected target of dtype int64 or uint8 (class indices, the input's shape without in_features) or of the "
        "input's floating dtype and the logits' shape (class probabilities), but got target of dtype ",
        target.scalar_type(), " and shape ", target.sizes(), " for input of shape ", input.sizes());
    TORCH_CHECK(
        target.sizes() == at::IntArrayRef(shape.token_sizes), op, ": expected target of shape ",
        at::IntArrayRef(shape.token_sizes), " (class indices: the input's shape without in_features) or ",
        at::IntArrayRef(logits_sizes), " (class probabilities), but got target of shape ", target.sizes(),
        " for input of shape ", input.sizes());
  }

  if (weight.has_value() && weight->defined()) {
    check_same_device(op, "weight", *weight, "input", input);
    check_same_dtype(op, "weight", *weight, "input", input);
    TORCH_CHECK(
        weight->dim() == 1 && weight->size(0) == shape.classes, op, ": expected weight of shape (num_classes,) = (",
        shape.classes, ",), one weight per class, but got weight of shape ", weight->sizes());
  }
  return shape;
}

}  // namespace

LinearCrossEntropyOptions parse_linear_cross_entropy_options(
    const char* op, c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap, int64_t chunk_budget) {
  LinearCrossEntropyOptions options;
  options.reduction = parse_reduction(reduction);
  options.ignore_index = ignore_index;
  TORCH_CHECK(
      label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be between 0.0 and 1.0. Got: ",
      label_smoothing);
  options.label_smoothing = label_smoothing;
  TORCH_CHECK(
      std::isfinite(lse_square_scale) && lse_square_scale >= 0.0, op,
      ": expected lse_square_scale to be a finite number >= 0, but got lse_square_scale=", lse_square_scale);
  options.lse_square_scale = lse_square_scale;
  TORCH_CHECK(
      !softcap.has_value() || (std::isfinite(*softcap) && *softcap > 0.0), op,
      ": expected softcap to be None or a finite number > 0, but got softcap=", softcap.value_or(0.0));
  options.softcap = softcap.value_or(0.0);
  TORCH_CHECK(
      chunk_budget > 0, op, ": expected chunk_budget (bytes of logits held at once) > 0, but got chunk_budget=",
      chunk_budget);
  options.chunk_budget = chunk_budget;
  return options;
}

LinearCrossEntropyShape check_linear_cross_entropy_forward(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, const LinearCrossEntropyOptions& options,
    std::array<bool, 3> grad_mask) {
  LinearCrossEntropyShape shape = check_common(kForward, input, linear_weight, linear_bias, target, weight, options);
  TORCH_CHECK(
      options.reduction != LossReduction::kNone || !(grad_mask[0] || grad_mask[1] || grad_mask[2]), kForward,
      ": gradients computed in the forward (grad_mask) need reduction 'mean' or 'sum': with reduction 'none' the "
      "backward op computes them from the upstream gradient, but got grad_mask=[", grad_mask[0], ", ", grad_mask[1],
      ", ", grad_mask[2], "]");
  return shape;
}

LinearCrossEntropyShape check_linear_cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const LinearCrossEntropyOptions& options) {
  LinearCrossEntropyShape shape = check_common(kBackward, input, linear_weight, linear_bias, target, weight, options);
  check_same_device(kBackward, "grad_loss", grad_loss, "input", input);
  check_same_dtype(kBackward, "grad_loss", grad_loss, "input", input);
  check_sizes(kBackward, "grad_loss", grad_loss, shape.loss_sizes);
  return shape;
}

}  // namespace torch_manualbp
