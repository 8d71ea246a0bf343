#include "softmax_cross_entropy_args.h"

#include <ATen/ATen.h>

#include <cmath>

#include "checks.h"

namespace torch_manualbp {
namespace {

constexpr const char* kForward = "softmax_cross_entropy";
constexpr const char* kBackward = "softmax_cross_entropy_backward";

bool is_floating(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf;
}

std::vector<int64_t> without_class_dim(at::IntArrayRef sizes) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out.erase(out.begin() + (sizes.size() == 1 ? 0 : 1));
  return out;
}

// Index targets: the input's shape without the class dim. As torch, a batch size that differs is a
// ValueError, any other mismatch a RuntimeError.
void check_index_target_shape(const char* op, const at::Tensor& input, const at::Tensor& target) {
  const std::vector<int64_t> expected = without_class_dim(input.sizes());
  if (input.dim() >= 2 && target.dim() == input.dim() - 1) {
    TORCH_CHECK_VALUE(
        target.size(0) == input.size(0), op, ": expected input batch_size (", input.size(0),
        ") to match target batch_size (", target.size(0), "): target of shape ", target.sizes(),
        " for input of shape ", input.sizes());
  }
  TORCH_CHECK(
      target.sizes() == at::IntArrayRef(expected), op, ": expected target of shape ", at::IntArrayRef(expected),
      " (class indices: the input's shape without the class dim 1) or ", input.sizes(),
      " (class probabilities), but got target of shape ", target.sizes(), " for input of shape ", input.sizes());
}

SoftmaxCrossEntropyShape check_common(
    const char* op, const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap) {
  SoftmaxCrossEntropyShape shape;
  shape.reduction = parse_reduction(reduction);
  check_floating(op, "input", input);
  TORCH_CHECK(
      input.dim() >= 1, op, ": expected input of shape (C,), (N, C) or (N, C, d1, ..., dK), but got input of shape ",
      input.sizes());
  check_same_device(op, "target", target, "input", input);
  // As torch: a target of the input's exact shape holds class probabilities, any other holds indices.
  if (target.sizes() == input.sizes()) {
    shape.target_kind = TargetKind::kProbability;
    TORCH_CHECK(
        is_floating(target.scalar_type()), op,
        ": expected target (class probabilities: the input's shape) of a floating dtype, but got target of dtype ",
        target.scalar_type(), " and shape ", target.sizes());
    check_same_dtype(op, "target (class probabilities)", target, "input", input);
    TORCH_CHECK(
        ignore_index < 0, op, ": ignore_index is not supported for class-probability targets (floating target of the "
        "input's shape); expected a negative ignore_index (e.g. the default -100), but got ignore_index=", ignore_index);
  } else {
    TORCH_CHECK(
        target.scalar_type() == at::kLong || target.scalar_type() == at::kByte, op,
        ": expected target of dtype int64 or uint8 (class indices, the input's shape without the class dim 1) or of "
        "the input's floating dtype and shape (class probabilities), but got target of dtype ",
        target.scalar_type(), " and shape ", target.sizes(), " for input of shape ", input.sizes());
    shape.target_kind = TargetKind::kClassIndex;
    check_index_target_shape(op, input, target);
  }
  TORCH_CHECK(
      label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be between 0.0 and 1.0. Got: ",
      label_smoothing);
  TORCH_CHECK(
      std::isfinite(lse_square_scale) && lse_square_scale >= 0.0, op,
      ": expected lse_square_scale to be a finite number >= 0, but got lse_square_scale=", lse_square_scale);
  TORCH_CHECK(
      !softcap.has_value() || (std::isfinite(*softcap) && *softcap > 0.0), op,
      ": expected softcap to be None or a finite number > 0, but got softcap=", softcap.value_or(0.0));

  const bool unbatched = input.dim() == 1;
  shape.outer = unbatched ? 1 : input.size(0);
  shape.classes = input.size(unbatched ? 0 : 1);
  shape.inner = 1;
  for (int64_t d = 2; d < input.dim(); ++d) shape.inner *= input.size(d);
  shape.position_sizes = without_class_dim(input.sizes());
  if (shape.reduction == LossReduction::kNone) shape.loss_sizes = shape.position_sizes;

  if (weight.has_value() && weight->defined()) {
    check_same_device(op, "weight", *weight, "input", input);
    check_same_dtype(op, "weight", *weight, "input", input);
    TORCH_CHECK(
        weight->dim() == 1 && weight->size(0) == shape.classes, op,
        ": expected weight of shape (C,) = (", shape.classes, ",), one weight per class, but got weight of shape ",
        weight->sizes());
  }
  return shape;
}

}  // namespace

LossReduction parse_reduction(c10::string_view reduction) {
  if (reduction == "none") return LossReduction::kNone;
  if (reduction == "mean") return LossReduction::kMean;
  TORCH_CHECK_VALUE(
      reduction == "sum", reduction, " is not a valid value for reduction (expected 'none', 'mean' or 'sum')");
  return LossReduction::kSum;
}

at::ScalarType softmax_stats_dtype(at::ScalarType input_dtype) {
  return (input_dtype == at::kHalf || input_dtype == at::kBFloat16) ? at::kFloat : input_dtype;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_forward_outputs(
    const SoftmaxCrossEntropyShape& shape, const at::Tensor& input) {
  const auto stats = input.options().dtype(softmax_stats_dtype(input.scalar_type()));
  return {
      at::empty(shape.loss_sizes, input.options()), at::empty(shape.position_sizes, stats),
      at::empty(shape.position_sizes, stats), at::empty({}, stats)};
}

at::Tensor weight_for_kernels(const std::optional<at::Tensor>& weight, at::ScalarType dtype) {
  if (!weight.has_value() || !weight->defined()) return at::Tensor();
  return weight->to(dtype).contiguous();
}

SoftmaxCrossEntropyShape check_softmax_cross_entropy_forward(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap) {
  return check_common(
      kForward, input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap);
}

SoftmaxCrossEntropyShape check_softmax_cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& max_logit, const at::Tensor& log_sum,
    const at::Tensor& normalizer, c10::string_view reduction, int64_t ignore_index, double label_smoothing,
    double lse_square_scale, std::optional<double> softcap) {
  SoftmaxCrossEntropyShape shape = check_common(
      kBackward, input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap);
  const at::ScalarType stats_dtype = softmax_stats_dtype(input.scalar_type());
  check_same_device(kBackward, "grad_loss", grad_loss, "input", input);
  check_same_dtype(kBackward, "grad_loss", grad_loss, "input", input);
  check_sizes(kBackward, "grad_loss", grad_loss, shape.loss_sizes);
  for (const auto& [name, stats] : {std::pair{"max_logit", &max_logit}, std::pair{"log_sum", &log_sum}}) {
    check_same_device(kBackward, name, *stats, "input", input);
    TORCH_CHECK(
        stats->scalar_type() == stats_dtype, kBackward, ": expected ", name, " of dtype ", stats_dtype,
        " (from the forward of a ", input.scalar_type(), " input), but got ", name, " of dtype ",
        stats->scalar_type());
    check_sizes(kBackward, name, *stats, shape.position_sizes);
  }
  check_same_device(kBackward, "normalizer", normalizer, "input", input);
  TORCH_CHECK(
      normalizer.scalar_type() == stats_dtype, kBackward, ": expected normalizer of dtype ", stats_dtype,
      " (from the forward of a ", input.scalar_type(), " input), but got normalizer of dtype ",
      normalizer.scalar_type());
  check_sizes(kBackward, "normalizer", normalizer, {});
  return shape;
}

at::Tensor z_loss_normalizer(
    const SoftmaxCrossEntropyShape& shape, const at::Tensor& target, int64_t ignore_index, double lse_square_scale,
    at::ScalarType stats_dtype) {
  if (!(lse_square_scale > 0) || shape.reduction != LossReduction::kMean) return at::Tensor();
  const auto options = target.options().dtype(stats_dtype);
  if (shape.target_kind == TargetKind::kProbability) {
    return at::scalar_tensor(static_cast<double>(shape.positions()), options);
  }
  // int64 first: a uint8 target compared with a negative ignore_index would wrap it into [0, 255].
  return target.to(at::kLong).ne(ignore_index).sum().to(stats_dtype);
}

}  // namespace torch_manualbp
