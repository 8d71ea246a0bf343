// Argument checks and shapes of the SoftmaxCrossEntropy ops, shared by the CPU and CUDA kernels.
//
// The input (logits) is seen as a contiguous (outer, classes, inner) array, class dimension 1 as in
// F.cross_entropy:  (C,) -> (1, C, 1),  (N, C) -> (N, C, 1),  (N, C, d1, ..., dK) -> (N, C, d1 * ... * dK).
// A "position" is one (n, s) pair of that view: one distribution over the classes, one loss term.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>
#include <vector>

namespace torch_manualbp {

// The schemas' `str reduction` arrives as c10::string_view: std::string_view itself in torch >= 2.6, its
// own class before, which the dispatcher of older torch requires in a kernel's signature.

// Class indices (int64 or uint8, the input's shape without the class dim) or class probabilities
// (floating, the input's dtype and exact shape).
enum class TargetKind { kClassIndex, kProbability };

enum class LossReduction { kNone, kMean, kSum };

struct SoftmaxCrossEntropyShape {
  int64_t outer;    // N (1 for an unbatched (C,) input)
  int64_t classes;  // C
  int64_t inner;    // S: product of the spatial dims d1..dK (1 for (C,) and (N, C))
  TargetKind target_kind;
  LossReduction reduction;
  std::vector<int64_t> position_sizes;  // the input's shape without the class dim: max_logit, log_sum, and loss for 'none'
  std::vector<int64_t> loss_sizes;      // position_sizes for 'none', {} (0-dim) for 'mean' and 'sum'

  int64_t positions() const { return outer * inner; }
};

// 'none', 'mean' or 'sum'; anything else is a ValueError with torch's wording.
LossReduction parse_reduction(c10::string_view reduction);

// float32 for float16/bfloat16 input, else the input's dtype: the type of max_logit, log_sum and normalizer.
at::ScalarType softmax_stats_dtype(at::ScalarType input_dtype);

// The forward op's outputs, allocated on the input's device, not filled: loss (the input's dtype,
// loss_sizes), max_logit and log_sum (softmax_stats_dtype, position_sizes), normalizer (0-dim).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_forward_outputs(
    const SoftmaxCrossEntropyShape& shape, const at::Tensor& input);

// The class weight in `dtype` (the stats dtype), contiguous, as the kernels read it; undefined without one.
at::Tensor weight_for_kernels(const std::optional<at::Tensor>& weight, at::ScalarType dtype);

// Checks input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale (finite, >= 0) and
// softcap (None or finite > 0); returns the shapes.
SoftmaxCrossEntropyShape check_softmax_cross_entropy_forward(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap);

// The forward's checks plus grad_loss (the loss's shape), max_logit and log_sum (position_sizes,
// softmax_stats_dtype) and normalizer (0-dim, softmax_stats_dtype).
SoftmaxCrossEntropyShape check_softmax_cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& max_logit, const at::Tensor& log_sum,
    const at::Tensor& normalizer, c10::string_view reduction, int64_t ignore_index, double label_smoothing,
    double lse_square_scale, std::optional<double> softcap);

// The z-loss's 'mean' normalizer as a 0-dim tensor of the stats dtype on the input's device, computed there
// (no host synchronisation): the number of positions whose target is not ignore_index (index targets), or of
// all positions (probability targets). Undefined where the backward needs none (no z-loss, or not 'mean').
at::Tensor z_loss_normalizer(
    const SoftmaxCrossEntropyShape& shape, const at::Tensor& target, int64_t ignore_index, double lse_square_scale,
    at::ScalarType stats_dtype);

}  // namespace torch_manualbp
