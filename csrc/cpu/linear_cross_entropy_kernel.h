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

  // A row whose class index is ignore_index has zero loss and gradient (its partials: those of nothing,
  // m = 0, S = 1, the rest 0). The unsharded CPU driver never passes such rows.
  int64_t ignore_index;

  // Vocab-parallel (csrc/vocab_parallel.cpp): the row holds the classes [class_offset, class_offset + classes)
  // of total_classes (eps / C uses total_classes). Class indices are global, checked to lie in
  // [0, total_classes); the target's terms exist only in the row that holds it. Unsharded: 0 and 0.
  int64_t class_offset;
  int64_t total_classes;
};

// Per-row outputs, acc_t, `rows` each (any may be nullptr when not wanted):
//   cross_entropy[r]  the cross-entropy of row r (class weight, label smoothing included)
//   z_loss[r]         lambda * lse_r^2
//   statistics        the partial mode (vocab-parallel): (rows, kPartialStatistics) instead of the losses
//                     and the gradient, which are then not written; see PartialStatistic.
struct ChunkLosses {
  void* cross_entropy;
  void* z_loss;
  void* statistics;
};

// The columns of one row's partial statistics over the classes it holds, relative to its own max m_r:
//   m_r = max_c z'_c,  S_r = sum_c exp(z'_c - m_r),  lin_r = sum_c a_c (z'_c - m_r),
//   A_r = sum_c a_c (probability targets) or the sum of the class weights W_r (index targets),
//   z_t = z'_t and w_t = the target's class weight where the row holds the target, else 0 and 0.
// a_c: w_c (index targets with smoothing; eps / C applied when the ranks' partials are combined) or
// w_c ((1 - eps) p_c + eps / C) (probability targets). A row whose max is -inf gives S_r = lin_r = 0; NaN or
// +inf gives NaN in m_r, S_r, lin_r, A_r.
enum PartialStatistic : int64_t {
  kPartialMax = 0,
  kPartialSum,
  kPartialLinear,
  kPartialCoefficient,
  kPartialTargetLogit,
  kPartialTargetWeight
};
constexpr int64_t kPartialStatistics = 6;

// The columns of the global statistics the gradient-from-statistics mode is given per row:
//   M (the max over all classes), log S (S = sum_c exp(z'_c - M) over all classes), A (the coefficient sum
//   sum_c a_c of the loss: (1 - eps) w_t + (eps / C) W for index targets), lse = M + log S.
enum GivenStatistic : int64_t { kGivenMax = 0, kGivenLogSum, kGivenCoefficient, kGivenLse };
constexpr int64_t kGivenStatistics = 4;

// The gradient the kernel writes over the logits, per row r:
//   d loss / d z_rc = (ce_scale_r (softmax_c A_r - a_rc) + z_scale_r 2 lambda lse_r softmax_c) * softcap'_rc
// ce_scale_r and z_scale_r: a pointer to one acc_t (the same for every row) or `rows` of them (per_row).
// grad_target: for probability targets, (rows, classes) of dtype, row stride `classes`, or nullptr.
// statistics: (rows, kGivenStatistics) acc_t, or nullptr: the gradient-from-given-statistics mode
// (vocab-parallel), where softmax_c = exp(z'_c - M) / S and A, lse come from these global values instead of
// the row's own sums (no loss is written; per_row scales).
struct ChunkGradient {
  bool wanted;  // false: the logits are left as they are (after the bias and softcap, when there are any)
  const void* ce_scale;
  const void* z_scale;
  bool per_row;
  void* grad_target;
  const void* statistics;
};

struct LinearCrossEntropyKernels {
  void (*rows)(const LogitsChunk& chunk, const ChunkLosses& losses, const ChunkGradient& gradient);
};

TORCH_MANUALBP_DECLARE_KERNEL_TABLE(LinearCrossEntropyKernels, linear_cross_entropy_kernels)

}  // namespace torch_manualbp::cpu
