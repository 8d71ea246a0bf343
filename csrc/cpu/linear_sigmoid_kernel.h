// The hand-written loops of LinearSigmoid on the CPU (everything but the GEMMs), one table per SIMD level.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/dispatch.h"
#include "cpu/row_map.h"

namespace torch_manualbp::cpu {

// Rows of the backward's per-block bias partial sums: fixed, so that the bias gradient is summed in the
// same order whatever the thread count (bitwise deterministic).
constexpr int64_t kBiasGradBlockRows = 32;

inline int64_t bias_grad_blocks(int64_t rows) {
  return (rows + kBiasGradBlockRows - 1) / kBiasGradBlockRows;
}

struct LinearSigmoidKernels {
  // Forward epilogue, in place over the contiguous (rows, cols) GEMM output z:
  //   out[r, c] = sigmoid(z[r, c] + bias(r, c))          (bias == nullptr: no bias)
  void (*bias_sigmoid)(c10::ScalarType dtype, void* out, int64_t rows, int64_t cols, const RowMap* bias);

  // Backward elementwise pass, writing the contiguous (rows, cols) grad_z:
  //   grad_z[r, c] = grad_out(r, c) * y[r, c] * (1 - y[r, c])
  // and, when grad_bias != nullptr, its column sums grad_bias[c] = sum_r grad_z[r, c] (in the accumulation
  // type: float for float/bfloat16/float16, double for double), summed per block of kBiasGradBlockRows
  // rows into `block_sums` (bias_grad_blocks(rows) x cols, same type, overwritten) and then over blocks
  // pairwise in a fixed order.
  void (*sigmoid_backward)(
      c10::ScalarType dtype, void* grad_z, const RowMap& grad_out, const void* y, int64_t rows, int64_t cols,
      void* grad_bias, void* block_sums);
};

TORCH_MANUALBP_DECLARE_KERNEL_TABLE(LinearSigmoidKernels, linear_sigmoid_kernels)

}  // namespace torch_manualbp::cpu
