// LinearCrossEntropy: the output projection and the cross-entropy fused, the (tokens, classes) logits never
// materialised. This file holds the derivation, the device-generic chunk driver and the CPU registration; the
// row kernel is cpu/linear_cross_entropy_kernel.cpp (CUDA: cuda/linear_cross_entropy.cu).
//
// Per token i (a row x_i of the input, D features), with W (C, D), bias b and logits z_i = W x_i + b:
//   z'_ic = s tanh(z_ic / s)                    softcap s (optional; z' = z without it)
//   lse_i = log sum_c exp(z'_ic),               y_ic = softmax_c(z'_i) = exp(z'_ic - lse_i)
//   ce_i  = sum_c a_ic (lse_i - z'_ic)          the cross-entropy of F.cross_entropy, where
//           index target t:   a_ic = w_c eps / C + (1 - eps) w_t [c == t]    (class weight w, smoothing eps)
//           probability p:    a_ic = w_c ((1 - eps) p_ic + eps / C)
//   zl_i  = lambda lse_i^2                      the z-loss (lse_square_scale lambda)
//   loss  = sum_i ce_i / N_ce + sum_i zl_i / N_z    'mean': N_ce = sum of w_t over non-ignored tokens (index) or
//                                                    the number of tokens (probability), N_z the number of
//                                                    non-ignored tokens; 'sum': N = 1; 'none': per token.
// Ignored tokens (t == ignore_index) contribute nothing.
//
// Gradient of the logits. d lse / d z'_c = y_c, so with A_i = sum_c a_ic:
//   d ce_i / d z'_ic = y_ic A_i - a_ic           d zl_i / d z'_ic = 2 lambda lse_i y_ic
//   d z'_ic / d z_ic = 1 - tanh^2(z_ic / s) = 1 - (z'_ic / s)^2
// so, with the upstream gradient g (g_i for 'none') and k_ce = g / N_ce, k_z = g / N_z:
//   G_ic = d loss / d z_ic = (k_ce (y_ic A_i - a_ic) + k_z 2 lambda lse_i y_ic) (1 - (z'_ic / s)^2)
// For an unweighted, unsmoothed index target (a = onehot(t), A = 1) this is the familiar (y - onehot) k_ce.
// The rest is the chain rule through z = x W^T + b:
//   dX = G W          dW = G^T X          db = sum_i G_i          d p_ic = k_ce (1 - eps) w_c (lse_i - z'_ic)
//
// Chunks. The tokens are taken a chunk of n at a time, n = chunk_budget / (C * element size): a chunk's
// logits Z_k = X_k W^T (one ATen GEMM) are turned by the row kernel into G_k in place, in cache, and then
//   dX_k = G_k W      (rows of dX: each token is in exactly one chunk, nothing to accumulate)
//   dW  += G_k^T X_k  (accumulated over chunks in acc: float32 for bfloat16/float16, rounded once)
//   db  += sum_i G_k,i
// so a forward+backward costs three GEMMs' worth, 6 N C D flops, with one chunk of logits alive. For the
// scalar reductions the upstream gradient g is a single number: the forward computes dX, dW, db for g = 1
// while the chunk is in cache (the "ahead" gradients, grad_mask), and the backward only multiplies by g.
// With reduction 'none' (g_i per token), a target gradient, or a second backward, the backward op recomputes
// the chunks (a fourth GEMM). Under no_grad the forward is one GEMM's worth: logits and the row losses only.
// Tokens whose target is ignore_index are dropped before the GEMMs on the CPU (they cost nothing); CUDA keeps
// them in place (their gradient rows are zero), since counting them would synchronise with the host.
// The chunking depends on the shapes and the budget only, never on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu/linear_cross_entropy_kernel.h"
#include "huge_pages.h"
#include "linear_cross_entropy_chunks.h"
#include "linear_cross_entropy_driver.h"
#include "unrequested_output.h"

namespace torch_manualbp {
namespace {

constexpr const char* kForward = "linear_cross_entropy";
constexpr const char* kBackward = "linear_cross_entropy_backward";

// Reduced precision: bytes of one block of a chunk's weight-gradient share (rounded by the GEMM, then added to
// the float32 sum while it is still in cache).
constexpr int64_t kWeightShareBytes = int64_t(4) << 20;

// The weight gradient dW = sum_k G_k^T X_k of a bfloat16/float16 input, summed in float32 and rounded once,
// returned in the input's dtype. A reduced-precision GEMM rounds its output, so each chunk's share S_k is
// exact as a bfloat16/float16 number; what must not be rounded is the running sum. With K chunks:
//   K = 1:   dW = S_1, the GEMM writes it in place;
//   K = 2:   S_1 is kept in dW itself, then dW = round(S_1 + S_2) (ATen adds reduced types in float32);
//   K > 2:   the float32 sum A = S_1 + S_2, A += S_k, and the last chunk writes dW = round(A + S_K).
// The same numbers as a float32 accumulator rounded at the end, with no float32 copy of dW at all up to two
// chunks and none returned: a pass over dW fewer than accumulating everything in float32 and casting after.
// Shares after the first are computed a block of classes at a time into a small buffer, read back from cache.
class ReducedWeightGradient {
 public:
  ReducedWeightGradient(at::Tensor grad_weight, int64_t chunks)
      : out_(std::move(grad_weight)), chunks_(chunks) {
    const int64_t D = out_.size(1);
    block_rows_ = std::max<int64_t>(
        1, std::min<int64_t>(out_.size(0), kWeightShareBytes / std::max<int64_t>(1, D * out_.element_size())));
    if (chunks_ > 1) share_ = at::empty({block_rows_, D}, out_.options());
  }

  // Adds chunk k's share G_k^T X_k (chunks in order, k = 0 .. chunks - 1).
  void add(int64_t k, const at::Tensor& grad_logits, const at::Tensor& x_chunk) {
    if (k == 0) {
      at::mm_out(out_, grad_logits.t(), x_chunk);
      return;
    }
    const bool last = k == chunks_ - 1;
    if (k == 1 && !last) sum_ = empty_large(out_.sizes(), out_.options().dtype(at::kFloat));
    const int64_t C = out_.size(0);
    for (int64_t c0 = 0; c0 < C; c0 += block_rows_) {
      const int64_t rows_here = std::min(block_rows_, C - c0);
      at::Tensor share = share_.narrow(0, 0, rows_here);
      at::mm_out(share, grad_logits.narrow(1, c0, rows_here).t(), x_chunk);
      at::Tensor out = out_.narrow(0, c0, rows_here);
      if (k == 1 && last) {
        out.add_(share);  // round(S_1 + S_2), computed in float32
      } else if (k == 1) {
        at::Tensor sum = sum_.narrow(0, c0, rows_here);
        sum.copy_(out);  // S_1 + S_2 in float32 (an add of two reduced tensors would round)
        sum.add_(share);
      } else if (!last) {
        sum_.narrow(0, c0, rows_here).add_(share);
      } else {
        at::add_out(out, sum_.narrow(0, c0, rows_here), share);
      }
    }
  }

 private:
  at::Tensor out_;    // (C, D), the input's dtype
  int64_t chunks_;
  int64_t block_rows_;
  at::Tensor share_;  // (block_rows_, D), the input's dtype
  at::Tensor sum_;    // (C, D) float32, only with more than two chunks
};

// CPU: one pass over the targets; ignored tokens leave the selection, an index outside [0, C) is an IndexError
// (before any GEMM).
TokenSelection select_tokens_cpu(
    const at::Tensor& target_flat, const at::Tensor& class_weight, int64_t classes, int64_t ignore_index,
    at::ScalarType acc_dtype) {
  const int64_t n = target_flat.numel();
  const at::Tensor t = target_flat.to(at::kLong).contiguous();
  const int64_t* target = t.const_data_ptr<int64_t>();
  std::vector<int64_t> rows, kept_classes;
  rows.reserve(n);
  kept_classes.reserve(n);
  const at::Tensor w = class_weight.defined() ? class_weight.to(at::kDouble).contiguous() : at::Tensor();
  const double* weight = w.defined() ? w.const_data_ptr<double>() : nullptr;
  double total_weight = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = target[i];
    if (c == ignore_index) continue;
    TORCH_CHECK_INDEX(c >= 0 && c < classes, "Target ", c, " is out of bounds.");
    rows.push_back(i);
    kept_classes.push_back(c);
    total_weight += weight != nullptr ? weight[c] : 1.0;
  }
  TokenSelection selection;
  selection.count = static_cast<int64_t>(rows.size());
  if (selection.count != n) selection.rows = at::tensor(rows, at::kLong);
  selection.classes = at::tensor(kept_classes, at::kLong);
  const auto acc = at::TensorOptions().dtype(acc_dtype);
  selection.ce_normalizer = at::scalar_tensor(total_weight, acc);
  selection.z_normalizer = at::scalar_tensor(static_cast<double>(selection.count), acc);
  return selection;
}

// Other devices: every token stays in place (ignored ones get zero loss and gradient from the row kernel),
// the normalizers are reduced on the device, and the row kernel checks the class indices.
TokenSelection select_tokens_on_device(
    const at::Tensor& target_flat, const at::Tensor& class_weight, int64_t ignore_index, at::ScalarType acc_dtype) {
  TokenSelection selection;
  selection.count = target_flat.numel();
  selection.classes = target_flat.to(at::kLong).contiguous();
  const at::Tensor kept = selection.classes != ignore_index;
  if (class_weight.defined()) {
    const at::Tensor safe = at::where(kept, selection.classes, at::zeros_like(selection.classes));
    selection.ce_normalizer = (class_weight.index_select(0, safe) * kept).sum().to(acc_dtype);
  } else {
    selection.ce_normalizer = kept.sum().to(acc_dtype);
  }
  selection.z_normalizer = kept.sum().to(acc_dtype);
  return selection;
}

TokenSelection select_tokens(
    const LinearCrossEntropyShape& shape, const at::Tensor& target_flat, const at::Tensor& class_weight,
    int64_t ignore_index, at::ScalarType acc_dtype, const at::Device& device) {
  if (shape.target_kind == TargetKind::kProbability) {
    TokenSelection selection;
    selection.count = shape.tokens;
    const auto acc = at::TensorOptions().dtype(acc_dtype).device(device);
    selection.ce_normalizer = at::scalar_tensor(static_cast<double>(shape.tokens), acc);
    selection.z_normalizer = selection.ce_normalizer;
    return selection;
  }
  if (device.is_cpu()) return select_tokens_cpu(target_flat, class_weight, shape.classes, ignore_index, acc_dtype);
  return select_tokens_on_device(target_flat, class_weight, ignore_index, acc_dtype);
}

// Tokens per chunk: as many as the budget's bytes of logits allow, at least one.
int64_t chunk_rows(const LinearCrossEntropyOptions& options, int64_t classes, int64_t element_size, int64_t count) {
  const int64_t row_bytes = std::max<int64_t>(1, classes * element_size);
  return std::max<int64_t>(1, std::min<int64_t>(count, options.chunk_budget / row_bytes));
}

}  // namespace

ChunkResults run_chunks(
    const LinearCrossEntropyShape& shape, const LinearCrossEntropyOptions& options, const at::Tensor& x,
    const at::Tensor& linear_weight, const at::Tensor& bias, const at::Tensor& probability,
    const at::Tensor& class_weight, const TokenSelection& selection, bool want_losses, const Wanted& wanted,
    const at::Tensor& ce_scale, const at::Tensor& z_scale, bool per_row, RowKernel rows, const ClassBlock& block) {
  const int64_t M = selection.count, C = shape.classes, D = shape.in_features;
  const auto options_in = x.options();
  const at::ScalarType acc_dtype = at::toOpMathType(x.scalar_type());
  const auto acc = options_in.dtype(acc_dtype);
  const bool reduced = acc_dtype != x.scalar_type();

  ChunkResults out;
  if (want_losses) {
    out.cross_entropy = at::empty({M}, acc);
    out.z_loss = options.lse_square_scale > 0 ? at::empty({M}, acc) : at::Tensor();
  }
  const bool compacted = selection.rows.defined();
  if (wanted.input) {
    out.grad_input = compacted ? at::zeros({shape.tokens, D}, options_in) : at::empty({shape.tokens, D}, options_in);
  }
  if (wanted.weight) out.grad_weight = empty_large({C, D}, options_in);
  if (wanted.bias) out.grad_bias = at::zeros({C}, acc);
  if (wanted.target) out.grad_target = empty_large({shape.tokens, C}, options_in);
  if (block.want_statistics) out.statistics = at::empty({M, cpu::kPartialStatistics}, acc);
  if (M == 0) {
    if (wanted.weight) out.grad_weight.zero_();
    return out;
  }

  const int64_t n_max = chunk_rows(options, C, x.element_size(), M);
  const at::Tensor logits_buffer = empty_large({n_max, C}, options_in);
  at::Tensor x_buffer = compacted ? at::empty({n_max, D}, options_in) : at::Tensor();
  at::Tensor dx_buffer = compacted && wanted.input ? at::empty({n_max, D}, options_in) : at::Tensor();
  std::optional<ReducedWeightGradient> reduced_weight;
  if (reduced && wanted.weight) reduced_weight.emplace(out.grad_weight, (M + n_max - 1) / n_max);
  const at::Tensor weight_t = linear_weight.t();

  LogitsChunkTensors chunk;
  chunk.bias = bias;
  chunk.class_weight = class_weight;
  chunk.options = &options;
  chunk.want_gradient = wanted.any();
  chunk.class_offset = block.class_offset;
  chunk.total_classes = block.total_classes;
  for (int64_t start = 0; start < M; start += n_max) {
    const int64_t n = std::min(n_max, M - start);
    at::Tensor x_chunk;
    at::Tensor rows_chunk;
    if (compacted) {
      rows_chunk = selection.rows.narrow(0, start, n);
      x_chunk = x_buffer.narrow(0, 0, n);
      at::index_select_out(x_chunk, x, 0, rows_chunk);
    } else {
      x_chunk = x.narrow(0, start, n);
    }
    chunk.logits = logits_buffer.narrow(0, 0, n);
    at::mm_out(chunk.logits, x_chunk, weight_t);

    chunk.target_index = selection.classes.defined() ? selection.classes.narrow(0, start, n) : at::Tensor();
    chunk.target_probability = probability.defined() ? probability.narrow(0, start, n) : at::Tensor();
    chunk.cross_entropy = want_losses ? out.cross_entropy.narrow(0, start, n) : at::Tensor();
    chunk.z_loss = out.z_loss.defined() ? out.z_loss.narrow(0, start, n) : at::Tensor();
    chunk.ce_scale = per_row ? ce_scale.narrow(0, start, n) : ce_scale;
    chunk.z_scale = per_row ? z_scale.narrow(0, start, n) : z_scale;
    chunk.per_row = per_row;
    chunk.grad_target = wanted.target ? out.grad_target.narrow(0, start, n) : at::Tensor();
    chunk.statistics = block.want_statistics ? out.statistics.narrow(0, start, n) : at::Tensor();
    chunk.given_statistics =
        block.given_statistics.defined() ? block.given_statistics.narrow(0, start, n) : at::Tensor();
    rows(chunk);

    const at::Tensor& grad_logits = chunk.logits;
    if (wanted.input) {
      if (compacted) {
        at::Tensor dx = dx_buffer.narrow(0, 0, n);
        at::mm_out(dx, grad_logits, linear_weight);
        out.grad_input.index_copy_(0, rows_chunk, dx);
      } else {
        at::Tensor dx = out.grad_input.narrow(0, start, n);
        at::mm_out(dx, grad_logits, linear_weight);
      }
    }
    if (wanted.weight) {
      if (!reduced) {
        if (start == 0) {
          at::mm_out(out.grad_weight, grad_logits.t(), x_chunk);
        } else {
          out.grad_weight.addmm_(grad_logits.t(), x_chunk);
        }
      } else {
        reduced_weight->add(start / n_max, grad_logits, x_chunk);
      }
    }
    if (wanted.bias) out.grad_bias.add_(grad_logits.sum(0, /*keepdim=*/false, acc_dtype));
  }
  return out;
}

namespace {

struct Prepared {
  LinearCrossEntropyShape shape;
  at::Tensor x;            // (N, D)
  at::Tensor bias;         // (C,) contiguous or undefined
  at::Tensor probability;  // (N, C) contiguous or undefined
  at::Tensor class_weight; // (C,) acc contiguous or undefined
  TokenSelection selection;
};

Prepared prepare(
    LinearCrossEntropyShape shape, const LinearCrossEntropyOptions& options, const at::Tensor& input,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight) {
  Prepared p;
  const at::ScalarType acc_dtype = at::toOpMathType(input.scalar_type());
  p.x = input.reshape({shape.tokens, shape.in_features});
  if (linear_bias.has_value() && linear_bias->defined()) p.bias = linear_bias->contiguous();
  if (weight.has_value() && weight->defined()) p.class_weight = weight->to(acc_dtype).contiguous();
  if (shape.target_kind == TargetKind::kProbability) {
    p.probability = target.reshape({shape.tokens, shape.classes}).contiguous();
  }
  const at::Tensor target_flat =
      shape.target_kind == TargetKind::kClassIndex ? target.reshape({shape.tokens}) : at::Tensor();
  p.selection = select_tokens(shape, target_flat, p.class_weight, options.ignore_index, acc_dtype, input.device());
  p.shape = std::move(shape);
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_forward_impl(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, double lse_square_scale, std::optional<double> softcap,
    std::array<bool, 3> grad_mask, int64_t chunk_budget, RowKernel rows) {
  const LinearCrossEntropyOptions options = parse_linear_cross_entropy_options(
      kForward, reduction, ignore_index, label_smoothing, lse_square_scale, softcap, chunk_budget);
  Prepared p = prepare(
      check_linear_cross_entropy_forward(input, linear_weight, linear_bias, target, weight, options, grad_mask),
      options, input, linear_bias, target, weight);
  const bool mean = options.reduction == LossReduction::kMean;
  Wanted wanted;
  wanted.input = grad_mask[0];
  wanted.weight = grad_mask[1];
  wanted.bias = grad_mask[2] && p.bias.defined();
  // The gradients for an upstream gradient of 1: k_ce = 1 / N_ce, k_z = 1 / N_z ('mean'), or 1 ('sum').
  const at::Tensor one = at::ones({}, p.selection.ce_normalizer.options());
  const at::Tensor ce_scale = mean ? one / p.selection.ce_normalizer : one;
  const at::Tensor z_scale = mean ? one / p.selection.z_normalizer : one;
  ChunkResults r = run_chunks(
      p.shape, options, p.x, linear_weight, p.bias, p.probability, p.class_weight, p.selection, true, wanted,
      ce_scale, z_scale, false, rows);

  at::Tensor loss;
  if (options.reduction == LossReduction::kNone) {
    at::Tensor per_token = r.z_loss.defined() ? r.cross_entropy + r.z_loss : r.cross_entropy;
    if (p.selection.rows.defined()) {
      loss = at::zeros({p.shape.tokens}, per_token.options()).index_copy_(0, p.selection.rows, per_token);
    } else {
      loss = per_token;
    }
    loss = loss.to(input.scalar_type()).view(p.shape.loss_sizes);
  } else {
    // Summed in double in a fixed order, then normalised and rounded once.
    at::Tensor total = r.cross_entropy.sum(0, false, at::kDouble);
    if (mean) total = total / p.selection.ce_normalizer.to(at::kDouble);
    if (r.z_loss.defined()) {
      at::Tensor z_total = r.z_loss.sum(0, false, at::kDouble);
      total = total + (mean ? z_total / p.selection.z_normalizer.to(at::kDouble) : z_total);
    }
    loss = total.to(input.scalar_type());
  }
  const auto nothing = [&] { return unrequested_output(input); };
  at::Tensor grad_input = wanted.input ? r.grad_input.view(input.sizes()) : nothing();
  at::Tensor grad_weight = wanted.weight ? r.grad_weight : nothing();
  at::Tensor grad_bias = wanted.bias ? r.grad_bias : nothing();
  return {loss, grad_input, grad_weight, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_impl(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap, std::array<bool, 4> output_mask, int64_t chunk_budget, RowKernel rows) {
  const LinearCrossEntropyOptions options = parse_linear_cross_entropy_options(
      kBackward, reduction, ignore_index, label_smoothing, lse_square_scale, softcap, chunk_budget);
  Prepared p = prepare(
      check_linear_cross_entropy_backward(grad_loss, input, linear_weight, linear_bias, target, weight, options),
      options, input, linear_bias, target, weight);
  const Wanted wanted = Wanted::from_mask(output_mask, p.bias.defined(), p.shape.target_kind);
  const auto nothing = [&] { return unrequested_output(input); };
  if (!wanted.any()) return {nothing(), nothing(), nothing(), nothing()};

  const at::ScalarType acc_dtype = at::toOpMathType(input.scalar_type());
  at::Tensor ce_scale, z_scale;
  const bool per_row = options.reduction == LossReduction::kNone;
  if (per_row) {
    // k_ce = k_z = g_i for each selected token.
    at::Tensor g = grad_loss.reshape({p.shape.tokens}).to(acc_dtype);
    if (p.selection.rows.defined()) g = g.index_select(0, p.selection.rows);
    ce_scale = z_scale = g.contiguous();
  } else {
    const at::Tensor g = grad_loss.to(acc_dtype);
    const bool mean = options.reduction == LossReduction::kMean;
    ce_scale = (mean ? g / p.selection.ce_normalizer : g).reshape({1});
    z_scale = (mean ? g / p.selection.z_normalizer : g).reshape({1});
  }
  ChunkResults r = run_chunks(
      p.shape, options, p.x, linear_weight, p.bias, p.probability, p.class_weight, p.selection, false, wanted,
      ce_scale, z_scale, per_row, rows);
  const at::ScalarType dtype = input.scalar_type();
  return {
      wanted.input ? r.grad_input.view(input.sizes()) : nothing(),
      wanted.weight ? r.grad_weight : nothing(),  // already in the input's dtype
      wanted.bias ? r.grad_bias.to(dtype) : nothing(),
      wanted.target ? r.grad_target.view(target.sizes()) : nothing()};
}

// The CPU row kernel, called on one chunk's tensors.
void linear_cross_entropy_cpu_rows(const LogitsChunkTensors& chunk) {
  const LinearCrossEntropyOptions& options = *chunk.options;
  cpu::LogitsChunk args;
  args.dtype = chunk.logits.scalar_type();
  args.logits = chunk.logits.data_ptr();
  args.rows = chunk.logits.size(0);
  args.classes = chunk.logits.size(1);
  args.row_stride = chunk.logits.stride(0);
  args.bias = chunk.bias.defined() ? chunk.bias.const_data_ptr() : nullptr;
  args.target_index = chunk.target_index.defined() ? chunk.target_index.const_data_ptr<int64_t>() : nullptr;
  args.target_probability = chunk.target_probability.defined() ? chunk.target_probability.const_data_ptr() : nullptr;
  args.class_weight = chunk.class_weight.defined() ? chunk.class_weight.const_data_ptr() : nullptr;
  args.label_smoothing = options.label_smoothing;
  args.lse_square_scale = options.lse_square_scale;
  args.softcap = options.softcap;
  args.ignore_index = options.ignore_index;
  args.class_offset = chunk.class_offset;
  args.total_classes = chunk.total_classes;
  cpu::ChunkLosses losses;
  losses.cross_entropy = chunk.cross_entropy.defined() ? chunk.cross_entropy.data_ptr() : nullptr;
  losses.z_loss = chunk.z_loss.defined() ? chunk.z_loss.data_ptr() : nullptr;
  losses.statistics = chunk.statistics.defined() ? chunk.statistics.data_ptr() : nullptr;
  cpu::ChunkGradient gradient;
  gradient.wanted = chunk.want_gradient;
  gradient.ce_scale = chunk.ce_scale.defined() ? chunk.ce_scale.const_data_ptr() : nullptr;
  gradient.z_scale = chunk.z_scale.defined() ? chunk.z_scale.const_data_ptr() : nullptr;
  gradient.per_row = chunk.per_row;
  gradient.grad_target = chunk.grad_target.defined() ? chunk.grad_target.data_ptr() : nullptr;
  gradient.statistics = chunk.given_statistics.defined() ? chunk.given_statistics.const_data_ptr() : nullptr;
  cpu::linear_cross_entropy_kernels_for_this_cpu().rows(args, losses, gradient);
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, double lse_square_scale, std::optional<double> softcap,
    std::array<bool, 3> grad_mask, int64_t chunk_budget) {
  return linear_cross_entropy_forward_impl(
      input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale,
      softcap, grad_mask, chunk_budget, &linear_cross_entropy_cpu_rows);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap, std::array<bool, 4> output_mask, int64_t chunk_budget) {
  return linear_cross_entropy_backward_impl(
      grad_loss, input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
      lse_square_scale, softcap, output_mask, chunk_budget, &linear_cross_entropy_cpu_rows);
}

}  // namespace

namespace cpu {
TORCH_MANUALBP_DEFINE_KERNEL_TABLE(LinearCrossEntropyKernels, linear_cross_entropy_kernels)
}  // namespace cpu

TORCH_LIBRARY_IMPL(torch_manualbp, CPU, m) {
  m.impl("linear_cross_entropy_forward", &forward_cpu);
  m.impl("linear_cross_entropy_backward", &backward_cpu);
}

}  // namespace torch_manualbp
