// The hand-written part of LinearCrossEntropy on the CPU: the row kernel that turns one chunk of logits
// (the output of an ATen GEMM) into per-row losses and, in place, the gradient of those logits. One table
// per SIMD level (see cpu/dispatch.h); the math is written above the ops in csrc/linear_cross_entropy.cpp.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/dispatch.h"

namespace torch_manualbp::cpu {

// One chunk of rows, as the row kernel reads it. acc_t is float for float32, bfloat16 and float16 logits
// and double for float64 ones; "dtype" is the logits' (= input's) dtype.
struct LogitsChunk {
  c10::ScalarType dtype;
  void* logits;          // (rows, classes), row stride `row_stride`; holds x W^T, becomes the gradient
  int64_t rows;
  int64_t classes;
  int64_t row_stride;
  const void* bias;      // (classes,) of dtype, or nullptr: added to every row before anything else

  // Targets: class indices (one per row, already checked to lie in [0, classes); ignore_index rows are
  // never in a chunk) or class probabilities (rows, classes) of dtype, row stride `classes`.
  const int64_t* target_index;
  const void* target_probability;

  const void* class_weight;  // (classes,) of acc_t, or nullptr
  double label_smoothing;     // eps
  double lse_square_scale;    // lambda of the z-loss lambda * lse^2 (0: none)
  double softcap;             // s of z -> s tanh(z / s) (0: none)
};

// Per-row outputs, acc_t, `rows` each (any may be nullptr when not wanted):
//   cross_entropy[r]  the cross-entropy of row r (class weight, label smoothing included)
//   z_loss[r]         lambda * lse_r^2
struct ChunkLosses {
  void* cross_entropy;
  void* z_loss;
};

// The gradient the kernel writes over the logits, per row r:
//   d loss / d z_rc = (ce_scale_r (softmax_c A_r - a_rc) + z_scale_r 2 lambda lse_r softmax_c) * softcap'_rc
// ce_scale_r and z_scale_r: a pointer to one acc_t (the same for every row) or `rows` of them (per_row).
// grad_target: for probability targets, (rows, classes) of dtype, row stride `classes`, or nullptr.
struct ChunkGradient {
  bool wanted;  // false: the logits are left as they are (after the bias and softcap, when there are any)
  const void* ce_scale;
  const void* z_scale;
  bool per_row;
  void* grad_target;
};

struct LinearCrossEntropyKernels {
  void (*rows)(const LogitsChunk& chunk, const ChunkLosses& losses, const ChunkGradient& gradient);
};

TORCH_MANUALBP_DECLARE_KERNEL_TABLE(LinearCrossEntropyKernels, linear_cross_entropy_kernels)

}  // namespace torch_manualbp::cpu
