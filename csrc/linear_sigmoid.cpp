// LinearSigmoid on the CPU: y = sigmoid(x @ W^T + b).
//
// Forward: one GEMM (ATen) writes z = x @ W^T into the output buffer, then one vectorized parallel pass
// (cpu/linear_sigmoid_kernel.cpp) turns it into y = sigmoid(z + b) in place. Saved for backward: x, W, y.
//
// Backward, from the saved output y (no need to keep z):
//   dy/dz       = sigmoid'(z) = sigmoid(z) (1 - sigmoid(z)) = y (1 - y)          (elementwise)
//   dz          = dy * y * (1 - y)                                                 (one hand-written pass)
//   db          = sum of dz over the dims the bias was broadcast along              (fused into that pass
//                                                                                   for a bias (out,))
//   dW          = dz^T @ x        since z_rk = sum_j x_rj W_kj  =>  dz_rk/dW_kj = x_rj   (ATen GEMM)
//   dx          = dz @ W          since dz_rk/dx_rj = W_kj                              (ATen GEMM)
// Outputs that output_mask does not ask for are not computed and come back as empty tensors.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "unrequested_output.h"
#include "cpu/linear_sigmoid_kernel.h"
#include "linear_sigmoid_args.h"
#include "row_map_builder.h"

namespace torch_manualbp {
namespace {

at::Tensor linear_sigmoid_forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const LinearSigmoidShape shape = check_linear_sigmoid_forward(input, weight, bias);
  at::Tensor out = at::empty({shape.rows, shape.out_features}, input.options());
  at::mm_out(out, input.reshape({shape.rows, shape.in_features}), weight.t());
  if (out.numel() > 0) {
    const bool has_bias = bias.has_value() && bias->defined();
    at::Tensor bias_storage;
    cpu::RowMap bias_map;
    if (has_bias) bias_map = make_row_map(*bias, shape.output_sizes, bias_storage);
    cpu::linear_sigmoid_kernels_for_this_cpu().bias_sigmoid(
        out.scalar_type(), out.data_ptr(), shape.rows, shape.out_features, has_bias ? &bias_map : nullptr);
  }
  return out.view(shape.output_sizes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_sigmoid_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    at::OptionalIntArrayRef bias_sizes, std::array<bool, 3> output_mask) {
  const LinearSigmoidShape shape = check_linear_sigmoid_backward(grad_output, input, weight, output, bias_sizes);
  const bool want_input = output_mask[0];
  const bool want_weight = output_mask[1];
  const bool want_bias = output_mask[2] && bias_sizes.has_value();
  const auto nothing = [&] { return unrequested_output(input); };
  if (!want_input && !want_weight && !want_bias) return {nothing(), nothing(), nothing()};

  const auto acc_dtype = at::toOpMathType(input.scalar_type());
  const bool fuse_bias = want_bias && bias_is_row_vector(*bias_sizes, shape.out_features);
  at::Tensor grad_z = at::empty({shape.rows, shape.out_features}, input.options());
  at::Tensor fused_grad_bias;
  if (grad_z.numel() > 0) {
    at::Tensor grad_out_storage;
    const cpu::RowMap grad_out_map = make_row_map(grad_output, shape.output_sizes, grad_out_storage);
    const at::Tensor y = output.reshape({shape.rows, shape.out_features}).contiguous();
    at::Tensor block_sums;
    if (fuse_bias) {
      fused_grad_bias = at::empty({shape.out_features}, input.options().dtype(acc_dtype));
      block_sums = at::empty({cpu::bias_grad_blocks(shape.rows), shape.out_features}, fused_grad_bias.options());
    }
    cpu::linear_sigmoid_kernels_for_this_cpu().sigmoid_backward(
        input.scalar_type(), grad_z.data_ptr(), grad_out_map, y.data_ptr(), shape.rows, shape.out_features,
        fuse_bias ? fused_grad_bias.data_ptr() : nullptr, fuse_bias ? block_sums.data_ptr() : nullptr);
  } else {
    grad_z.zero_();
  }

  at::Tensor grad_input = nothing(), grad_weight = nothing(), grad_bias = nothing();
  if (want_input) grad_input = at::mm(grad_z, weight).view(input.sizes());
  if (want_weight) grad_weight = at::mm(grad_z.t(), input.reshape({shape.rows, shape.in_features}));
  if (want_bias) {
    if (fused_grad_bias.defined()) {
      grad_bias = fused_grad_bias.to(input.scalar_type()).view(*bias_sizes);
    } else {
      // A general broadcast bias (per-sample (N, out), (1, 1), ...): dz summed to the bias's shape.
      grad_bias = at::sum_to(grad_z.view(shape.output_sizes), *bias_sizes).clone(at::MemoryFormat::Contiguous);
    }
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

namespace cpu {
TORCH_MANUALBP_DEFINE_KERNEL_TABLE(LinearSigmoidKernels, linear_sigmoid_kernels)
}  // namespace cpu

TORCH_LIBRARY_IMPL(torch_manualbp, CPU, m) {
  m.impl("linear_sigmoid_forward", &linear_sigmoid_forward_cpu);
  m.impl("linear_sigmoid_backward", &linear_sigmoid_backward_cpu);
}

}  // namespace torch_manualbp
