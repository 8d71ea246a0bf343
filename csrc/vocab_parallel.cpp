// Vocab-parallel cross-entropy, the local work: softmax_cross_entropy and linear_cross_entropy when the classes
// are split over the ranks of a process group, rank r holding the classes [o_r, o_r + C_r) of C (blocks in rank
// order; target indices are global). The combination of the ranks' statistics (the collectives) and its
// derivation are in torch_manualbp/layers/vocab_parallel.py; in its letters, per token, with z' the logits after
// the bias and the softcap and a_c the coefficients of the loss's linear term:
//
//   statistics ops   the partials over this rank's classes, relative to its own max m_r (cpu::PartialStatistic):
//                      m_r = max_c z'_c   S_r = sum_c exp(z'_c - m_r)   lin_r = sum_c a_c (z'_c - m_r)
//                      A_r = sum_c a_c (probability) or W_r = sum_c w_c (index)   z'_t, w_t (where t is here)
//                    swept by the LinearCrossEntropy row kernel in its partial mode: one GEMM (linear) or one
//                    read of the logits, no gradient.
//   gradient ops     G_c = (k_ce (y_c A - a_c) + k_z 2 lambda lse y_c) (1 - (z'_c / s)^2),  y_c = exp(z'_c - M) / S
//                    from the global M, log S, A, lse of each token (cpu::GivenStatistic): the row kernel's sweep 3
//                    given those; then, for linear_cross_entropy, dX_r = G W_r, dW_r = G^T X, db_r = sum_i G_i
//                    (the GEMMs of the unsharded layer: the logits are recomputed, a fourth GEMM's worth).
//
// The ops check their arguments as the unsharded ones (same messages), and that the block lies in the classes.
#include "vocab_parallel.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "cpu/linear_cross_entropy_kernel.h"
#include "linear_cross_entropy_args.h"
#include "linear_cross_entropy_chunks.h"
#include "unrequested_output.h"

namespace torch_manualbp {
namespace {

constexpr const char* kStatistics = "vocab_parallel_cross_entropy_statistics";
constexpr const char* kGradient = "vocab_parallel_cross_entropy_gradient";
constexpr const char* kLinearStatistics = "vocab_parallel_linear_cross_entropy_statistics";
constexpr const char* kLinearGradient = "vocab_parallel_linear_cross_entropy_gradient";

// Bytes of logits copied at a time where the row kernel would write over them (softcap): the statistics ops
// never write to their input.
constexpr int64_t kCopyBudget = int64_t(16) << 20;

void check_block(const char* op, int64_t class_offset, int64_t classes, int64_t total_classes) {
  TORCH_CHECK(
      class_offset >= 0 && total_classes >= class_offset + classes && total_classes > 0, op,
      ": expected this rank's classes [class_offset, class_offset + ", classes, ") to lie in [0, total_classes), but got "
      "class_offset=", class_offset, " and total_classes=", total_classes);
}

// The logits ops' input (tokens, C_r), target and class weight, as the unsharded layer checks them.
TargetKind check_logits(
    const char* op, const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight) {
  check_floating(op, "input", input);
  TORCH_CHECK(
      input.dim() == 2, op, ": expected input of shape (tokens, classes of this rank) with 2 dimensions, but got input "
      "of shape ", input.sizes());
  check_same_device(op, "target", target, "input", input);
  TargetKind kind;
  if (target.sizes() == input.sizes()) {
    kind = TargetKind::kProbability;
    check_same_dtype(op, "target (class probabilities)", target, "input", input);
  } else {
    kind = TargetKind::kClassIndex;
    TORCH_CHECK(
        target.scalar_type() == at::kLong || target.scalar_type() == at::kByte, op,
        ": expected target of dtype int64 or uint8 (class indices) or of the input's shape and dtype (class "
        "probabilities), but got target of dtype ", target.scalar_type(), " and shape ", target.sizes());
    check_sizes(op, "target", target, {input.size(0)});
  }
  if (weight.has_value() && weight->defined()) {
    check_same_device(op, "weight", *weight, "input", input);
    check_same_dtype(op, "weight", *weight, "input", input);
    TORCH_CHECK(
        weight->dim() == 1 && weight->size(0) == input.size(1), op, ": expected weight of shape (classes of this rank,) = (",
        input.size(1), ",), but got weight of shape ", weight->sizes());
  }
  return kind;
}

// Global class indices outside [0, total_classes) that are not ignore_index: an IndexError. On the CPU only
// (a device would synchronise; its row kernel checks them).
void check_global_targets(const at::Tensor& index, int64_t ignore_index, int64_t total_classes) {
  if (!index.device().is_cpu()) return;
  const int64_t* t = index.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < index.numel(); ++i) {
    TORCH_CHECK_INDEX(t[i] == ignore_index || (t[i] >= 0 && t[i] < total_classes), "Target ", t[i], " is out of bounds.");
  }
}

void check_statistics(const char* op, const at::Tensor& statistics, const at::Tensor& ce_scale,
                      const at::Tensor& z_scale, int64_t tokens, const at::Tensor& input) {
  const at::ScalarType acc = at::toOpMathType(input.scalar_type());
  const auto check = [&](const char* name, const at::Tensor& t, std::vector<int64_t> sizes) {
    check_same_device(op, name, t, "input", input);
    TORCH_CHECK(
        t.scalar_type() == acc, op, ": expected ", name, " of dtype ", acc, " (the input's accumulation dtype), but got ",
        name, " of dtype ", t.scalar_type());
    check_sizes(op, name, t, sizes);
  };
  check("statistics", statistics, {tokens, cpu::kGivenStatistics});
  check("ce_scale", ce_scale, {tokens});
  check("z_scale", z_scale, {tokens});
}

LinearCrossEntropyOptions block_options(
    const char* op, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap, int64_t chunk_budget) {
  return parse_linear_cross_entropy_options(
      op, "none", ignore_index, label_smoothing, lse_square_scale, softcap, chunk_budget);
}

// The linear ops' tokens: on the CPU the ignored ones are dropped (they cost no GEMM) and the global class
// range is checked; elsewhere every token stays in place (the row kernel gives ignored ones zero everything).
TokenSelection select_block_tokens(
    const LinearCrossEntropyShape& shape, const at::Tensor& target, int64_t ignore_index, int64_t total_classes) {
  TokenSelection selection;
  selection.count = shape.tokens;
  if (shape.target_kind == TargetKind::kProbability) return selection;
  const at::Tensor index = target.reshape({shape.tokens}).to(at::kLong).contiguous();
  if (!index.device().is_cpu()) {
    selection.classes = index;
    return selection;
  }
  const int64_t* t = index.const_data_ptr<int64_t>();
  std::vector<int64_t> rows, classes;
  for (int64_t i = 0; i < shape.tokens; ++i) {
    if (t[i] == ignore_index) continue;
    TORCH_CHECK_INDEX(t[i] >= 0 && t[i] < total_classes, "Target ", t[i], " is out of bounds.");
    rows.push_back(i);
    classes.push_back(t[i]);
  }
  selection.count = static_cast<int64_t>(rows.size());
  if (selection.count != shape.tokens) selection.rows = at::tensor(rows, at::kLong);
  selection.classes = at::tensor(classes, at::kLong);
  return selection;
}

// The linear ops' shared preparation.
struct LinearBlock {
  LinearCrossEntropyShape shape;
  at::Tensor x, bias, probability, class_weight;
  TokenSelection selection;
};

LinearBlock prepare_linear(
    const char* op, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const LinearCrossEntropyOptions& options, int64_t class_offset, int64_t total_classes) {
  LinearBlock b;
  b.shape = check_linear_cross_entropy_forward(input, linear_weight, linear_bias, target, weight, options, {false, false, false});
  check_block(op, class_offset, b.shape.classes, total_classes);
  b.x = input.reshape({b.shape.tokens, b.shape.in_features});
  if (linear_bias.has_value() && linear_bias->defined()) b.bias = linear_bias->contiguous();
  if (weight.has_value() && weight->defined()) b.class_weight = weight->to(at::toOpMathType(input.scalar_type())).contiguous();
  if (b.shape.target_kind == TargetKind::kProbability) {
    b.probability = target.reshape({b.shape.tokens, b.shape.classes}).contiguous();
  }
  b.selection = select_block_tokens(b.shape, target, options.ignore_index, total_classes);
  return b;
}

}  // namespace

at::Tensor vocab_parallel_cross_entropy_statistics_impl(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
    double label_smoothing, std::optional<double> softcap, int64_t class_offset, int64_t total_classes,
    RowKernel rows) {
  const LinearCrossEntropyOptions options = block_options(kStatistics, ignore_index, label_smoothing, 0.0, softcap, 1);
  const TargetKind kind = check_logits(kStatistics, input, target, weight);
  const int64_t N = input.size(0), C = input.size(1);
  check_block(kStatistics, class_offset, C, total_classes);
  const at::ScalarType acc_dtype = at::toOpMathType(input.scalar_type());
  at::Tensor statistics = at::empty({N, cpu::kPartialStatistics}, input.options().dtype(acc_dtype));
  if (N == 0) return statistics;

  const at::Tensor x = input.contiguous();
  LogitsChunkTensors chunk;
  chunk.options = &options;
  chunk.class_weight = weight.has_value() && weight->defined() ? weight->to(acc_dtype).contiguous() : at::Tensor();
  chunk.want_gradient = false;
  chunk.per_row = false;
  chunk.class_offset = class_offset;
  chunk.total_classes = total_classes;
  const at::Tensor index = kind == TargetKind::kClassIndex ? target.to(at::kLong).contiguous() : at::Tensor();
  if (index.defined()) check_global_targets(index, ignore_index, total_classes);
  const at::Tensor probability = kind == TargetKind::kProbability ? target.contiguous() : at::Tensor();
  // With a softcap the row kernel writes z' over the logits it reads: it reads a copy, a chunk at a time.
  const bool copy = options.softcap > 0;
  const int64_t n_max = copy ? std::max<int64_t>(1, std::min<int64_t>(N, kCopyBudget / std::max<int64_t>(1, C * x.element_size()))) : N;
  const at::Tensor buffer = copy ? at::empty({n_max, C}, x.options()) : at::Tensor();
  for (int64_t start = 0; start < N; start += n_max) {
    const int64_t n = std::min(n_max, N - start);
    chunk.logits = copy ? buffer.narrow(0, 0, n).copy_(x.narrow(0, start, n)) : x.narrow(0, start, n);
    chunk.target_index = index.defined() ? index.narrow(0, start, n) : at::Tensor();
    chunk.target_probability = probability.defined() ? probability.narrow(0, start, n) : at::Tensor();
    chunk.statistics = statistics.narrow(0, start, n);
    rows(chunk);
  }
  return statistics;
}

std::tuple<at::Tensor, at::Tensor> vocab_parallel_cross_entropy_gradient_impl(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const at::Tensor& statistics, const at::Tensor& ce_scale, const at::Tensor& z_scale, int64_t ignore_index,
    double label_smoothing, double lse_square_scale, std::optional<double> softcap, int64_t class_offset,
    int64_t total_classes, std::array<bool, 2> output_mask, RowKernel rows) {
  const LinearCrossEntropyOptions options =
      block_options(kGradient, ignore_index, label_smoothing, lse_square_scale, softcap, 1);
  const TargetKind kind = check_logits(kGradient, input, target, weight);
  const int64_t N = input.size(0);
  check_block(kGradient, class_offset, input.size(1), total_classes);
  check_statistics(kGradient, statistics, ce_scale, z_scale, N, input);
  const bool want_target = output_mask[1] && kind == TargetKind::kProbability;
  if (!output_mask[0] && !want_target) return {unrequested_output(input), unrequested_output(input)};

  const at::ScalarType acc_dtype = at::toOpMathType(input.scalar_type());
  at::Tensor grad_input = at::empty(input.sizes(), input.options());  // the logits, then their gradient in place
  grad_input.copy_(input);
  at::Tensor grad_target = want_target ? at::empty(input.sizes(), input.options()) : at::Tensor();
  if (N > 0) {
    LogitsChunkTensors chunk;
    chunk.options = &options;
    chunk.logits = grad_input;
    chunk.class_weight = weight.has_value() && weight->defined() ? weight->to(acc_dtype).contiguous() : at::Tensor();
    chunk.target_index = kind == TargetKind::kClassIndex ? target.to(at::kLong).contiguous() : at::Tensor();
    if (chunk.target_index.defined()) check_global_targets(chunk.target_index, ignore_index, total_classes);
    chunk.target_probability = kind == TargetKind::kProbability ? target.contiguous() : at::Tensor();
    chunk.want_gradient = true;
    chunk.ce_scale = ce_scale.contiguous();
    chunk.z_scale = z_scale.contiguous();
    chunk.per_row = true;
    chunk.grad_target = grad_target;
    chunk.class_offset = class_offset;
    chunk.total_classes = total_classes;
    chunk.given_statistics = statistics.contiguous();
    rows(chunk);
  }
  return {
      output_mask[0] ? grad_input : unrequested_output(input), want_target ? grad_target : unrequested_output(input)};
}

at::Tensor vocab_parallel_linear_cross_entropy_statistics_impl(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing,
    std::optional<double> softcap, int64_t class_offset, int64_t total_classes, int64_t chunk_budget,
    RowKernel rows) {
  const LinearCrossEntropyOptions options =
      block_options(kLinearStatistics, ignore_index, label_smoothing, 0.0, softcap, chunk_budget);
  LinearBlock b = prepare_linear(
      kLinearStatistics, input, linear_weight, linear_bias, target, weight, options, class_offset, total_classes);
  ClassBlock block;
  block.class_offset = class_offset;
  block.total_classes = total_classes;
  block.want_statistics = true;
  ChunkResults r = run_chunks(
      b.shape, options, b.x, linear_weight, b.bias, b.probability, b.class_weight, b.selection, false, Wanted(),
      at::Tensor(), at::Tensor(), false, rows, block);
  if (!b.selection.rows.defined()) return r.statistics;
  // The ignored tokens' rows: the partials of nothing (m = 0, S = 1, the rest 0), as the row kernel writes them.
  at::Tensor statistics = at::zeros({b.shape.tokens, cpu::kPartialStatistics}, r.statistics.options());
  statistics.select(1, cpu::kPartialSum).fill_(1);
  return statistics.index_copy_(0, b.selection.rows, r.statistics);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vocab_parallel_linear_cross_entropy_gradient_impl(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, const at::Tensor& statistics,
    const at::Tensor& ce_scale, const at::Tensor& z_scale, int64_t ignore_index, double label_smoothing,
    double lse_square_scale, std::optional<double> softcap, int64_t class_offset, int64_t total_classes,
    std::array<bool, 4> output_mask, int64_t chunk_budget, RowKernel rows) {
  const LinearCrossEntropyOptions options =
      block_options(kLinearGradient, ignore_index, label_smoothing, lse_square_scale, softcap, chunk_budget);
  LinearBlock b = prepare_linear(
      kLinearGradient, input, linear_weight, linear_bias, target, weight, options, class_offset, total_classes);
  check_statistics(kLinearGradient, statistics, ce_scale, z_scale, b.shape.tokens, input);
  const Wanted wanted = Wanted::from_mask(output_mask, b.bias.defined(), b.shape.target_kind);
  const auto nothing = [&] { return unrequested_output(input); };
  if (!wanted.any()) return {nothing(), nothing(), nothing(), nothing()};
  const at::Tensor& kept = b.selection.rows;
  const auto select = [&](const at::Tensor& t) { return kept.defined() ? t.index_select(0, kept) : t.contiguous(); };
  ClassBlock block;
  block.class_offset = class_offset;
  block.total_classes = total_classes;
  block.given_statistics = select(statistics);
  ChunkResults r = run_chunks(
      b.shape, options, b.x, linear_weight, b.bias, b.probability, b.class_weight, b.selection, false, wanted,
      select(ce_scale), select(z_scale), true, rows, block);
  const at::ScalarType dtype = input.scalar_type();
  return {
      wanted.input ? r.grad_input.view(input.sizes()) : nothing(),
      wanted.weight ? r.grad_weight : nothing(),  // already in the input's dtype
      wanted.bias ? r.grad_bias.to(dtype) : nothing(),
      wanted.target ? r.grad_target.view(target.sizes()) : nothing()};
}

namespace {

at::Tensor statistics_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
    double label_smoothing, std::optional<double> softcap, int64_t class_offset, int64_t total_classes) {
  return vocab_parallel_cross_entropy_statistics_impl(
      input, target, weight, ignore_index, label_smoothing, softcap, class_offset, total_classes,
      &linear_cross_entropy_cpu_rows);
}

std::tuple<at::Tensor, at::Tensor> gradient_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const at::Tensor& statistics, const at::Tensor& ce_scale, const at::Tensor& z_scale, int64_t ignore_index,
    double label_smoothing, double lse_square_scale, std::optional<double> softcap, int64_t class_offset,
    int64_t total_classes, std::array<bool, 2> output_mask) {
  return vocab_parallel_cross_entropy_gradient_impl(
      input, target, weight, statistics, ce_scale, z_scale, ignore_index, label_smoothing, lse_square_scale, softcap,
      class_offset, total_classes, output_mask, &linear_cross_entropy_cpu_rows);
}

at::Tensor linear_statistics_cpu(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing,
    std::optional<double> softcap, int64_t class_offset, int64_t total_classes, int64_t chunk_budget) {
  return vocab_parallel_linear_cross_entropy_statistics_impl(
      input, linear_weight, linear_bias, target, weight, ignore_index, label_smoothing, softcap, class_offset,
      total_classes, chunk_budget, &linear_cross_entropy_cpu_rows);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_gradient_cpu(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, const at::Tensor& statistics,
    const at::Tensor& ce_scale, const at::Tensor& z_scale, int64_t ignore_index, double label_smoothing,
    double lse_square_scale, std::optional<double> softcap, int64_t class_offset, int64_t total_classes,
    std::array<bool, 4> output_mask, int64_t chunk_budget) {
  return vocab_parallel_linear_cross_entropy_gradient_impl(
      input, linear_weight, linear_bias, target, weight, statistics, ce_scale, z_scale, ignore_index, label_smoothing,
      lse_square_scale, softcap, class_offset, total_classes, output_mask, chunk_budget,
      &linear_cross_entropy_cpu_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_manualbp, CPU, m) {
  m.impl("vocab_parallel_cross_entropy_statistics", &statistics_cpu);
  m.impl("vocab_parallel_cross_entropy_gradient", &gradient_cpu);
  m.impl("vocab_parallel_linear_cross_entropy_statistics", &linear_statistics_cpu);
  m.impl("vocab_parallel_linear_cross_entropy_gradient", &linear_gradient_cpu);
}

}  // namespace torch_manualbp
