// SoftmaxCrossEntropy on the CPU: softmax over the class dim 1 fused with the cross-entropy of
// F.cross_entropy (class-index or class-probability targets, class weights w, ignore_index, label
// smoothing eps, reductions 'none' / 'mean' / 'sum').
//
// One position i is one distribution over C classes (the batch and spatial dims only enumerate them):
//   m = max_c x_c,   s = sum_c exp(x_c - m),   lse = m + log s,   y_c = softmax_c = exp((x_c - m) - log s).
//
// Forward (cpu/softmax_cross_entropy_rows_kernel.cpp: row_sums, then position_loss of cpu/cross_entropy_math.h;
// N-d inputs: cpu/softmax_cross_entropy_spatial_kernel.cpp, column_sums):
//   index target t (ignored positions give 0):
//     loss_i = (1 - eps) w_t (lse - x_t) + (eps / C) sum_c w_c (lse - x_c)
//            = (1 - eps) w_t ((m - x_t) + log s) + (eps / C) (W log s - lin),
//     W = sum_c w_c, lin = sum_c w_c (x_c - m)                       (coefficients a_c = w_c in the kernel)
//   probability target p (its rows need not sum to 1):
//     q_c = (1 - eps) p_c + eps / C,
//     loss_i = -sum_c w_c q_c (x_c - lse) = A log s - lin,
//     A = sum_c w_c q_c, lin = sum_c w_c q_c (x_c - m)              (a_c = w_c q_c)
//   Writing (m - x_t) + log s instead of lse - x_t keeps full precision for logits of any size.
//   'mean' divides the sum over positions by the normalizer: sum of w_t over non-ignored positions
//   (index; all ignored gives 0/0 = NaN, as torch) or the number of positions (probability).
//   Without weight, w_c = 1 and W = C.
//
// Backward. Every loss above has the form
//     loss_i = sum_c a_c (lse - x_c)       with a_c independent of x:
//     index:        a_c = w_c ((1 - eps) [c == t] + eps / C),   probability:  a_c = w_c q_c.
// The softmax Jacobian enters through d lse / d x_j = y_j, so d (lse - x_c) / d x_j = y_j - [c == j]:
//     d loss_i / d x_j = sum_c a_c (y_j - [c == j]) = y_j A - a_j,          A = sum_c a_c.
// For an unweighted one-hot target without smoothing (a = onehot(t), A = 1) the Jacobian times the
// cross-entropy gradient collapses to the familiar y - onehot(t) = softmax - target. Label smoothing
// moves eps of the target's mass to a uniform eps / C, class weights scale each class's share:
//     index:        A = (1 - eps) w_t + (eps / C) W,   a_j = (eps / C) w_j + (1 - eps) w_t [j == t]
//     probability:  A = sum_c w_c q_c,                 a_j = w_j q_j
// With the upstream gradient g_i = grad_loss_i / normalizer (one grad_loss for 'mean' and 'sum'; the
// normalizer is 1 for 'sum' and 'none'):
//     grad_input_ij  = g_i (y_ij A_i - a_ij)        (index_grad_block: exp(x - m) gA / s - gb w, then the
//                                                    target class gets - g (1 - eps) w_t; probability:
//                                                    probability_grad_block)
//     grad_target_ij = g_i (1 - eps) w_j ((m_i - x_ij) + log s_i)   (probability targets, through q = (1 - eps) p + eps / C)
// The forward keeps only m and log s per position (besides references to its inputs); y is recomputed
// from x, so the backward is one read of x (and p) and one write of the gradient. m and log s are kept
// apart rather than as their sum lse: x - m is exact for the classes that matter, so exp(x - m) / s is
// as accurate at logits of 1e7 as at 0 (torch's log_softmax also subtracts m first), while x - lse from
// a float32 lse would lose ulp(lse) ~ 1e-3 of the exponent at logits of 1e4.
//
// Non-finite rows, as torch: a row holding NaN or +inf, or only -inf, has NaN loss (0 when ignored) and
// NaN gradient (also when ignored: torch's log_softmax backward gives 0 * NaN there); -inf logits in a
// finite row have probability exactly 0.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "huge_pages.h"
#include "unrequested_output.h"
#include "cpu/softmax_cross_entropy_kernel.h"
#include "softmax_cross_entropy_args.h"

namespace torch_manualbp {
namespace {

cpu::CrossEntropyProblem make_problem(
    const SoftmaxCrossEntropyShape& shape, const at::Tensor& input, const at::Tensor& target, const at::Tensor& weight,
    int64_t ignore_index, double label_smoothing) {
  cpu::CrossEntropyProblem problem;
  problem.dtype = input.scalar_type();
  problem.input = input.const_data_ptr();
  problem.target = target.const_data_ptr();
  problem.probability_target = shape.target_kind == TargetKind::kProbability;
  problem.index_dtype = target.scalar_type();
  problem.weight = weight.defined() ? weight.const_data_ptr() : nullptr;
  problem.outer = shape.outer;
  problem.classes = shape.classes;
  problem.inner = shape.inner;
  problem.ignore_index = ignore_index;
  problem.label_smoothing = label_smoothing;
  return problem;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy_forward_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing) {
  const SoftmaxCrossEntropyShape shape =
      check_softmax_cross_entropy_forward(input, target, weight, reduction, ignore_index, label_smoothing);
  const at::ScalarType acc_dtype = softmax_stats_dtype(input.scalar_type());
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  const at::Tensor w = weight_for_kernels(weight, acc_dtype);
  const bool per_position = shape.reduction == LossReduction::kNone;

  at::Tensor loss, max_logit, log_sum, normalizer;
  std::tie(loss, max_logit, log_sum, normalizer) = empty_forward_outputs(shape, input);
  at::Tensor block_sums = at::empty(
      {per_position ? 0 : 2 * cpu::loss_blocks(shape.outer, shape.classes, shape.inner)},
      input.options().dtype(acc_dtype));

  cpu::CrossEntropyForwardOutputs out;
  out.loss = loss.data_ptr();
  out.per_position = per_position;
  out.mean = shape.reduction == LossReduction::kMean;
  out.max_logit = max_logit.data_ptr();
  out.log_sum = log_sum.data_ptr();
  out.normalizer = normalizer.data_ptr();
  out.block_sums = block_sums.data_ptr();
  cpu::softmax_cross_entropy_kernels_for_this_cpu().forward(
      make_problem(shape, x, t, w, ignore_index, label_smoothing), out);
  return {loss, max_logit, log_sum, normalizer};
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& max_logit, const at::Tensor& log_sum,
    const at::Tensor& normalizer, c10::string_view reduction, int64_t ignore_index, double label_smoothing,
    std::array<bool, 2> output_mask) {
  const SoftmaxCrossEntropyShape shape = check_softmax_cross_entropy_backward(
      grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing);
  const bool want_input = output_mask[0];
  const bool want_target = output_mask[1] && shape.target_kind == TargetKind::kProbability;
  const auto nothing = [&] { return unrequested_output(input); };
  if (!want_input && !want_target) return {nothing(), nothing()};

  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  const at::Tensor w = weight_for_kernels(weight, max_logit.scalar_type());
  const at::Tensor grad_loss_values = grad_loss.contiguous();
  const at::Tensor m = max_logit.contiguous();
  const at::Tensor log_s = log_sum.contiguous();
  // The logits' size: faulted in huge pages where the OS allows (huge_pages.h), whatever PyTorch's allocator does.
  at::Tensor grad_input = empty_large(input.sizes(), input.options());
  at::Tensor grad_target = want_target ? empty_large(input.sizes(), input.options()) : nothing();

  cpu::CrossEntropyBackwardArgs args;
  args.grad_loss = grad_loss_values.const_data_ptr();
  args.grad_per_position = shape.reduction == LossReduction::kNone;
  args.max_logit = m.const_data_ptr();
  args.log_sum = log_s.const_data_ptr();
  args.normalizer = normalizer.const_data_ptr();
  args.grad_input = grad_input.data_ptr();
  args.grad_target = want_target ? grad_target.data_ptr() : nullptr;
  cpu::softmax_cross_entropy_kernels_for_this_cpu().backward(
      make_problem(shape, x, t, w, ignore_index, label_smoothing), args);
  return {want_input ? grad_input : nothing(), grad_target};
}

}  // namespace

namespace cpu {
TORCH_MANUALBP_DEFINE_KERNEL_TABLE(SoftmaxCrossEntropyKernels, softmax_cross_entropy_kernels)
}  // namespace cpu

TORCH_LIBRARY_IMPL(torch_manualbp, CPU, m) {
  m.impl("softmax_cross_entropy_forward", &softmax_cross_entropy_forward_cpu);
  m.impl("softmax_cross_entropy_backward", &softmax_cross_entropy_backward_cpu);
}

}  // namespace torch_manualbp
