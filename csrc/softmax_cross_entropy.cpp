// SoftmaxCrossEntropy on the CPU: softmax over the class dim 1 fused with the cross-entropy of
// F.cross_entropy (class-index or class-probability targets, class weights w, ignore_index, label
// smoothing eps, reductions 'none' / 'mean' / 'sum'), and optionally a softcap of the logits and a z-loss.
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
// Softcap and z-loss, the two options of language-model heads (the semantics of LinearCrossEntropy,
// csrc/linear_cross_entropy.cpp). With a softcap s, every x above is the softcapped logit
//     x'_c = s tanh(z_c / s)        (z the input),      d x'_c / d z_c = 1 - tanh^2(z_c / s) = 1 - (x'_c / s)^2,
// and max_logit, log_sum are those of x'. The z-loss adds lambda lse_i^2 (lse of x') per non-ignored position
// (probability targets: every position): 'none' adds it to each position, 'sum' to the sum, and 'mean'
// divides it by N_z, the number of non-ignored positions, while the cross-entropy keeps its normalizer:
//     loss = sum_i ce_i / normalizer + lambda sum_i lse_i^2 / N_z.
// With d (lambda lse^2) / d x'_j = 2 lambda lse y_j and gz_i = grad_loss_i / N_z (grad_loss for 'sum', 'none'):
//     grad_input_ij = (g_i (y_ij A_i - a_ij) + gz_i 2 lambda lse_i y_ij) (1 - (x'_ij / s)^2)
//                   = (exp(x'_ij - m_i) (g_i A_i + gz_i 2 lambda lse_i) / s_i - g_i a_ij) (1 - (x'_ij / s)^2)
// The z-loss changes only the per-position factor of exp(x' - m) (softmax_factor, cpu/cross_entropy_position.h,
// which the LinearCrossEntropy row kernel calls too); the softcap transforms each block of logits before the
// same loops read it and multiplies each block of the gradient by its derivative once formed. grad_target
// keeps its formula, in x'. The backward counts N_z itself (z_loss_normalizer: ATen, on the input's device).
//
// Non-finite rows, as torch: a row holding NaN or +inf, or only -inf, has NaN loss (0 when ignored) and
// NaN gradient (also when ignored: torch's log_softmax backward gives 0 * NaN there); -inf logits in a
// finite row have probability exactly 0 (with a softcap, +-inf become +-s, as in the composite).
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
    int64_t ignore_index, double label_smoothing, double lse_square_scale, std::optional<double> softcap) {
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
  problem.lse_square_scale = lse_square_scale;
  problem.softcap = softcap.value_or(0.0);
  return problem;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy_forward_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap) {
  const SoftmaxCrossEntropyShape shape = check_softmax_cross_entropy_forward(
      input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap);
  const at::ScalarType acc_dtype = softmax_stats_dtype(input.scalar_type());
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  const at::Tensor w = weight_for_kernels(weight, acc_dtype);
  const bool per_position = shape.reduction == LossReduction::kNone;

  at::Tensor loss, max_logit, log_sum, normalizer;
  std::tie(loss, max_logit, log_sum, normalizer) = empty_forward_outputs(shape, input);
  const int64_t blocks = per_position ? 0 : cpu::loss_blocks(shape.outer, shape.classes, shape.inner);
  at::Tensor block_sums = at::empty({2 * blocks}, input.options().dtype(acc_dtype));
  at::Tensor z_block_sums = at::empty({lse_square_scale > 0 ? 2 * blocks : 0}, input.options().dtype(acc_dtype));

  cpu::CrossEntropyForwardOutputs out;
  out.loss = loss.data_ptr();
  out.per_position = per_position;
  out.mean = shape.reduction == LossReduction::kMean;
  out.max_logit = max_logit.data_ptr();
  out.log_sum = log_sum.data_ptr();
  out.normalizer = normalizer.data_ptr();
  out.block_sums = block_sums.data_ptr();
  out.z_block_sums = !per_position && lse_square_scale > 0 ? z_block_sums.data_ptr() : nullptr;
  cpu::softmax_cross_entropy_kernels_for_this_cpu().forward(
      make_problem(shape, x, t, w, ignore_index, label_smoothing, lse_square_scale, softcap), out);
  return {loss, max_logit, log_sum, normalizer};
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& max_logit, const at::Tensor& log_sum,
    const at::Tensor& normalizer, c10::string_view reduction, int64_t ignore_index, double label_smoothing,
    std::array<bool, 2> output_mask, double lse_square_scale, std::optional<double> softcap) {
  const SoftmaxCrossEntropyShape shape = check_softmax_cross_entropy_backward(
      grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing,
      lse_square_scale, softcap);
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
  const at::Tensor z_normalizer =
      z_loss_normalizer(shape, target, ignore_index, lse_square_scale, max_logit.scalar_type());
  // The logits' size: faulted in huge pages where the OS allows (huge_pages.h), whatever PyTorch's allocator does.
  at::Tensor grad_input = empty_large(input.sizes(), input.options());
  at::Tensor grad_target = want_target ? empty_large(input.sizes(), input.options()) : nothing();

  cpu::CrossEntropyBackwardArgs args;
  args.grad_loss = grad_loss_values.const_data_ptr();
  args.grad_per_position = shape.reduction == LossReduction::kNone;
  args.max_logit = m.const_data_ptr();
  args.log_sum = log_s.const_data_ptr();
  args.normalizer = normalizer.const_data_ptr();
  args.z_normalizer = z_normalizer.defined() ? z_normalizer.const_data_ptr() : nullptr;
  args.grad_input = grad_input.data_ptr();
  args.grad_target = want_target ? grad_target.data_ptr() : nullptr;
  cpu::softmax_cross_entropy_kernels_for_this_cpu().backward(
      make_problem(shape, x, t, w, ignore_index, label_smoothing, lse_square_scale, softcap), args);
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
