// Argument checks and shapes of the LinearCrossEntropy ops, shared by the CPU and CUDA drivers.
//
// input (*, in_features) is seen as a (tokens, in_features) matrix x, linear_weight as W (classes,
// in_features); the logits of a token are x W^T + b. A target of the logits' shape (*, classes) holds class
// probabilities, any other target class indices of the shape (*).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <c10/util/string_view.h>
#include <vector>

#include "softmax_cross_entropy_args.h"

namespace torch_manualbp {

struct LinearCrossEntropyOptions {
  LossReduction reduction;
  int64_t ignore_index;
  double label_smoothing;
  double lse_square_scale;  // 0: no z-loss
  double softcap;           // 0: no softcap
  int64_t chunk_budget;     // bytes of logits held at once
};

struct LinearCrossEntropyShape {
  int64_t tokens;
  int64_t in_features;
  int64_t classes;
  TargetKind target_kind;
  std::vector<int64_t> token_sizes;  // input's shape without in_features: the loss's shape for 'none'
  std::vector<int64_t> loss_sizes;   // token_sizes for 'none', {} otherwise
};

// Checks input, linear_weight, linear_bias, target, weight and the options; returns the shapes.
// grad_mask (input, linear_weight, linear_bias): gradients the forward computes ahead, which a scalar
// reduction allows only.
LinearCrossEntropyShape check_linear_cross_entropy_forward(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, const LinearCrossEntropyOptions& options,
    std::array<bool, 3> grad_mask);

// The forward's checks (without grad_mask) plus grad_loss (the loss's shape and the input's dtype).
LinearCrossEntropyShape check_linear_cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const LinearCrossEntropyOptions& options);

// The options of an op call, parsed and range-checked (reduction, label_smoothing, lse_square_scale,
// softcap, chunk_budget), with torch's exception types.
LinearCrossEntropyOptions parse_linear_cross_entropy_options(
    const char* op, c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap, int64_t chunk_budget);

}  // namespace torch_manualbp
