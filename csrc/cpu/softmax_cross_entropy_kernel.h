// The loops of SoftmaxCrossEntropy on the CPU, one table per SIMD level (see cpu/dispatch.h).
// The math they implement is written above the ops in csrc/softmax_cross_entropy.cpp.
#pragma once

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

#include "cpu/dispatch.h"

namespace torch_manualbp::cpu {

// One problem, as the kernels read it. The accumulation type acc_t is float for float32, bfloat16 and
// float16 inputs and double for float64 ones.
struct CrossEntropyProblem {
  c10::ScalarType dtype;  // of input, probability target, grad_input, grad_target and the loss
  const void* input;      // contiguous (outer, classes, inner)
  const void* target;     // class indices: contiguous (outer, inner) of index_dtype; probabilities: like input
  bool probability_target;
  c10::ScalarType index_dtype;  // kLong or kByte (class indices only)
  const void* weight;           // (classes,) of acc_t, or nullptr
  int64_t outer;
  int64_t classes;
  int64_t inner;
  int64_t ignore_index;
  double label_smoothing;
  double lse_square_scale;  // lambda of the z-loss lambda * lse^2 (0: none)
  double softcap;           // s of x -> s tanh(x / s) (0: none)
};

struct CrossEntropyForwardOutputs {
  void* loss;         // dtype: per position ('none', per_position) or one element (the reduced loss)
  bool per_position;  // reduction 'none'
  bool mean;          // reduction 'mean': the total is divided by the normalizer
  void* max_logit;    // acc_t, per position: m
  void* log_sum;      // acc_t, per position: log s (non-finite rows: m again, so m + log s is their lse)
  void* normalizer;   // acc_t, one element: total weight / positions for 'mean', 1 otherwise
  void* block_sums;   // acc_t scratch of 2 * loss_blocks(outer, classes, inner) (not used for 'none')
  void* z_block_sums; // the same for the z-loss ('mean' and 'sum' with a z-loss), else nullptr
};

struct CrossEntropyBackwardArgs {
  const void* grad_loss;  // dtype: per position (grad_per_position) or one element
  bool grad_per_position;
  const void* max_logit;   // acc_t, per position: m
  const void* log_sum;     // acc_t, per position: log s
  const void* normalizer;  // acc_t, one element
  const void* z_normalizer;  // acc_t, one element: the z-loss's 'mean' normalizer, or nullptr (1)
  void* grad_input;        // dtype, like input
  void* grad_target;       // dtype, like input, or nullptr (probability targets only)
};

// Rows (inner == 1) are reduced in fixed groups of this many, spatial positions (inner > 1) in chunks
// of spatial_lanes(classes) positions of one outer index: the partial loss sums do not depend on the
// thread count, and are then added in order (bitwise deterministic reductions).
constexpr int64_t kRowsPerLossBlock = 16;

// Elements of one spatial chunk (classes x lanes): the unit of the reduction order and of the conversion
// of bfloat16/float16 inputs to float (kept in L1).
constexpr int64_t kSpatialChunkElements = 4096;

inline int64_t spatial_lanes(int64_t classes) {
  const int64_t lanes = kSpatialChunkElements / std::max<int64_t>(classes, 1) / 16 * 16;
  return std::clamp<int64_t>(lanes, 16, 256);
}

inline int64_t loss_blocks(int64_t outer, int64_t classes, int64_t inner) {
  if (inner == 1) return (outer + kRowsPerLossBlock - 1) / kRowsPerLossBlock;
  const int64_t lanes = spatial_lanes(classes);
  return outer * ((inner + lanes - 1) / lanes);
}

struct SoftmaxCrossEntropyKernels {
  // Loss, m, log s and normalizer in one pass over the logits (see csrc/softmax_cross_entropy.cpp).
  // Throws c10::IndexError for a class index outside [0, classes) that is not ignore_index.
  void (*forward)(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out);

  // grad_input (and grad_target when asked) in one pass over the logits.
  void (*backward)(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args);
};

TORCH_MANUALBP_DECLARE_KERNEL_TABLE(SoftmaxCrossEntropyKernels, softmax_cross_entropy_kernels)

}  // namespace torch_manualbp::cpu
