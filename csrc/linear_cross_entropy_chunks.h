// The chunk loop of LinearCrossEntropy (csrc/linear_cross_entropy.cpp), shared with its vocab-parallel ops
// (csrc/vocab_parallel.cpp): GEMMs through ATen, a backend's row kernel on each chunk of logits.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>

#include "linear_cross_entropy_args.h"
#include "linear_cross_entropy_driver.h"

namespace torch_manualbp {

// The tokens that take part, their class indices and the loss normalizers N_ce, N_z.
struct TokenSelection {
  at::Tensor rows;     // int64 (M,) of the tokens taking part, in order; undefined: all N in place
  at::Tensor classes;  // int64 (M,) their class indices (index targets), else undefined
  int64_t count;       // M
  at::Tensor ce_normalizer;  // acc, 0-dim (unused by run_chunks)
  at::Tensor z_normalizer;   // acc, 0-dim (unused by run_chunks)
};

// What a driver call computes besides the losses.
struct Wanted {
  bool input = false, weight = false, bias = false, target = false;
  bool any() const { return input || weight || bias || target; }

  // A backward op's output_mask (input, linear_weight, linear_bias, target), less the gradients that cannot
  // exist: no bias, or index targets.
  static Wanted from_mask(const std::array<bool, 4>& output_mask, bool has_bias, TargetKind target_kind) {
    Wanted wanted;
    wanted.input = output_mask[0];
    wanted.weight = output_mask[1];
    wanted.bias = output_mask[2] && has_bias;
    wanted.target = output_mask[3] && target_kind == TargetKind::kProbability;
    return wanted;
  }
};

// Vocab-parallel calls: the block of the classes the weight's rows are (LogitsChunkTensors), and the row
// kernel's partial mode (want_statistics) or given-statistics mode (given_statistics, (M, 4) acc, one row per
// selected token).
struct ClassBlock {
  int64_t class_offset = 0;
  int64_t total_classes = 0;
  bool want_statistics = false;
  at::Tensor given_statistics;
};

struct ChunkResults {
  at::Tensor cross_entropy, z_loss;  // acc (M,), or undefined
  at::Tensor grad_input;             // input's dtype (N, D), or undefined
  at::Tensor grad_weight;            // input's dtype (C, D) (summed in acc), or undefined
  at::Tensor grad_bias;              // acc (C,), or undefined
  at::Tensor grad_target;            // input's dtype (N, C), or undefined
  at::Tensor statistics;             // acc (M, 6), the partials (ClassBlock::want_statistics), or undefined
};

// The chunk loop shared by the forward and backward ops. ce_scale / z_scale: k_ce and k_z, one value or one
// per selected token (per_row).
ChunkResults run_chunks(
    const LinearCrossEntropyShape& shape, const LinearCrossEntropyOptions& options, const at::Tensor& x,
    const at::Tensor& linear_weight, const at::Tensor& bias, const at::Tensor& probability,
    const at::Tensor& class_weight, const TokenSelection& selection, bool want_losses, const Wanted& wanted,
    const at::Tensor& ce_scale, const at::Tensor& z_scale, bool per_row, RowKernel rows,
    const ClassBlock& block = ClassBlock());

// The CPU row kernel on one chunk (cpu/linear_cross_entropy_kernel.cpp at this CPU's SIMD level).
void linear_cross_entropy_cpu_rows(const LogitsChunkTensors& chunk);

}  // namespace torch_manualbp
