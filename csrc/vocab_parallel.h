// The local work of the vocab-parallel losses (csrc/vocab_parallel.cpp), device-generic: each backend registers
// these with its row kernel (CPU there, CUDA in cuda/linear_cross_entropy.cu). The collectives that combine the
// ranks' partials are torch.distributed's, in torch_manualbp/layers/vocab_parallel.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "linear_cross_entropy_driver.h"

namespace torch_manualbp {

// (tokens, 6) partial statistics of the logits input (tokens, C_r), this rank's classes
// [class_offset, class_offset + C_r) of total_classes; the columns of cpu::PartialStatistic.
at::Tensor vocab_parallel_cross_entropy_statistics_impl(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
    double label_smoothing, std::optional<double> softcap, int64_t class_offset, int64_t total_classes,
    RowKernel rows);

// (grad_input, grad_target) of the logits input (tokens, C_r) from the global statistics (tokens, 4) and the
// per-token scales k_ce, k_z (tokens,); what output_mask leaves out is empty.
std::tuple<at::Tensor, at::Tensor> vocab_parallel_cross_entropy_gradient_impl(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const at::Tensor& statistics, const at::Tensor& ce_scale, const at::Tensor& z_scale, int64_t ignore_index,
    double label_smoothing, double lse_square_scale, std::optional<double> softcap, int64_t class_offset,
    int64_t total_classes, std::array<bool, 2> output_mask, RowKernel rows);

// (tokens, 6) partial statistics of the logits input W_r^T + b_r, chunk by chunk (one GEMM).
at::Tensor vocab_parallel_linear_cross_entropy_statistics_impl(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing,
    std::optional<double> softcap, int64_t class_offset, int64_t total_classes, int64_t chunk_budget,
    RowKernel rows);

// (grad_input (this rank's share, to be summed over the ranks), grad_linear_weight, grad_linear_bias,
// grad_target) from the global statistics, the logits recomputed chunk by chunk.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vocab_parallel_linear_cross_entropy_gradient_impl(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, const at::Tensor& statistics,
    const at::Tensor& ce_scale, const at::Tensor& z_scale, int64_t ignore_index, double label_smoothing,
    double lse_square_scale, std::optional<double> softcap, int64_t class_offset, int64_t total_classes,
    std::array<bool, 4> output_mask, int64_t chunk_budget, RowKernel rows);

}  // namespace torch_manualbp
