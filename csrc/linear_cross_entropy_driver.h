// The device-generic chunk driver of LinearCrossEntropy (csrc/linear_cross_entropy.cpp): it loops over chunks
// of tokens, runs the GEMMs through ATen (MKL/oneDNN on the CPU, cuBLAS on CUDA) and hands each chunk of
// logits to a backend's row kernel, never holding more than one chunk of logits.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <c10/util/string_view.h>
#include <tuple>

#include "linear_cross_entropy_args.h"

namespace torch_manualbp {

// One chunk of n tokens, as a backend's row kernel receives it. acc is float for float32/bfloat16/float16
// and double for float64.
struct LogitsChunkTensors {
  at::Tensor logits;              // (n, classes), contiguous rows, the input's dtype: x W^T in, the gradient out
  at::Tensor bias;                // (classes,) contiguous, or undefined
  at::Tensor target_index;        // (n,) int64 class indices, or undefined (the CPU never passes ignore_index
                                  // rows; a device that keeps them in place gives them zero loss and gradient)
  at::Tensor target_probability;  // (n, classes) contiguous, or undefined
  at::Tensor class_weight;        // (classes,) acc contiguous, or undefined
  const LinearCrossEntropyOptions* options;
  at::Tensor cross_entropy;       // (n,) acc output, or undefined
  at::Tensor z_loss;              // (n,) acc output, or undefined
  bool want_gradient;
  at::Tensor ce_scale;            // acc, 1 element or (n,): k_ce of the row kernel
  at::Tensor z_scale;             // acc, 1 element or (n,): k_z
  bool per_row;                   // ce_scale and z_scale hold one value per row
  at::Tensor grad_target;         // (n, classes) output (probability targets), or undefined

  // Vocab-parallel (csrc/vocab_parallel.cpp; the row kernel's partial and given-statistics modes): the chunk
  // holds the classes [class_offset, class_offset + classes) of total_classes (0: all of them), target indices
  // are global. statistics: (n, 6) acc output of the partials (then nothing else is written); given_statistics:
  // (n, 4) acc, the global M, log S, A, lse of each row, from which the gradient is formed (per_row scales).
  int64_t class_offset = 0;
  int64_t total_classes = 0;
  at::Tensor statistics;
  at::Tensor given_statistics;
};

using RowKernel = void (*)(const LogitsChunkTensors& chunk);

// (loss, grad_input, grad_linear_weight, grad_linear_bias). With grad_mask, the gradients of the loss for an
// upstream gradient of 1 (scalar reductions only); grad_linear_weight and grad_linear_bias in acc (their
// cross-chunk accumulators), grad_input in the input's dtype; what grad_mask leaves out is empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_forward_impl(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, double lse_square_scale, std::optional<double> softcap,
    std::array<bool, 3> grad_mask, int64_t chunk_budget, RowKernel rows);

// (grad_input, grad_linear_weight, grad_linear_bias, grad_target) for the upstream gradient grad_loss, all in
// the input's dtype, recomputing the logits chunk by chunk; what output_mask leaves out is empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_impl(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap, std::array<bool, 4> output_mask, int64_t chunk_budget, RowKernel rows);

}  // namespace torch_manualbp
