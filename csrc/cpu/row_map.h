// A tensor broadcast to a (rows, cols) matrix, as the CPU and CUDA kernels read it: row r starts at element
// offset(r) of `data`, and element c of a row is at c * col_stride (1: a contiguous row; 0: one value
// repeated along the row). Rows are the flattened leading dims of the broadcast shape, so a bias of
// shape (out,), (N, out), (1, 1) or a zero-stride upstream gradient are all read in place, uncopied.
// Plain data on purpose: the per-SIMD-level kernel files include it without ATen's Tensor, and the CUDA
// kernels take it by value as a kernel argument.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace torch_manualbp::cpu {

struct RowMap {
  static constexpr int kMaxDims = 8;

  const void* data = nullptr;
  int64_t col_stride = 1;
  int64_t ndim = 0;  // leading dims, coalesced
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements

  C10_HOST_DEVICE int64_t offset(int64_t row) const {
    int64_t off = 0;
    for (int64_t d = ndim - 1; d >= 0; --d) {
      off += (row % sizes[d]) * strides[d];
      row /= sizes[d];
    }
    return off;
  }

  // Every row starts at the same element: one row repeated (e.g. a bias of shape (out,)).
  bool rows_repeat() const {
    for (int64_t d = 0; d < ndim; ++d) {
      if (strides[d] != 0 && sizes[d] != 1) return false;
    }
    return true;
  }
};

}  // namespace torch_manualbp::cpu
