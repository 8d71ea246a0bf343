// LinearSigmoid on CUDA: y = sigmoid(x @ W^T + b), the same algorithm as the CPU op (csrc/linear_sigmoid.cpp).
//
// Forward: one cuBLAS GEMM (through ATen) writes z = x @ W^T into the output buffer, then one hand-written
// kernel turns it into y = sigmoid(z + b) in place. Saved for backward: x, W, y.
// Backward: one kernel computes dz = dy * y * (1 - y) and, for a bias (out,), per-block column sums of dz;
// a second kernel adds the blocks' sums in a fixed order (no float atomics: bitwise reproducible); then
// dW = dz^T @ x and dx = dz @ W through ATen (cuBLAS).
//
// Both kernels cover the (rows, cols) output with blocks of kThreads threads shaped (tile_cols, tile_rows):
// a thread owns one column and walks rows with a fixed stride, so that a bias (out,) is read once per
// thread, a column sum stays in a register, and no index is divided per element. Consecutive threads
// touch consecutive columns (coalesced).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "unrequested_output.h"
#include "cpu/row_map.h"
#include "cuda/device_helpers.cuh"
#include "linear_sigmoid_args.h"
#include "row_map_builder.h"

namespace torch_manualbp {
namespace {

using cpu::RowMap;
using cuda::ceil_div;
using cuda::exp_of;

constexpr int kThreads = 256;
constexpr int kMaxTileCols = 128;
// Rows each thread walks at least, and blocks launched at most: the grid depends on the shape only, so
// the order of the bias-gradient sums is the same on every run and every GPU.
constexpr int64_t kMinRowsPerThread = 4;
constexpr int64_t kMaxBlocks = 2048;

struct ColumnTiling {
  dim3 grid;
  dim3 block;
};

ColumnTiling column_tiling(int64_t rows, int64_t cols) {
  int tile_cols = 1;
  while (tile_cols < cols && tile_cols < kMaxTileCols) tile_cols *= 2;
  const int tile_rows = kThreads / tile_cols;
  const int64_t col_blocks = ceil_div(cols, tile_cols);
  TORCH_CHECK(col_blocks <= INT_MAX, "linear_sigmoid: out_features = ", cols, " is too large for one CUDA grid");
  const int64_t row_blocks =
      std::clamp<int64_t>(ceil_div(rows, tile_rows * kMinRowsPerThread), 1, std::max<int64_t>(1, kMaxBlocks / col_blocks));
  return {dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks)),
          dim3(static_cast<unsigned>(tile_cols), static_cast<unsigned>(tile_rows))};
}

// Where row r of a broadcast matrix starts. The coalesced leading dims multiply to the row count, so with
// one dim (the common contiguous or per-sample case) the row index needs no division.
__device__ __forceinline__ int64_t row_start(const RowMap& map, int64_t row) {
  return map.ndim == 1 ? row * map.strides[0] : map.offset(row);
}

// sigmoid(z) without overflow: e = exp(-|z|) lies in (0, 1], and
//   sigmoid(z) = 1 / (1 + e)  for z >= 0,      e / (1 + e)  for z < 0
// (the CPU kernels' formula, csrc/cpu/vec_helpers.h). NaN stays NaN.
template <typename acc_t>
__device__ __forceinline__ acc_t stable_sigmoid(acc_t z) {
  const acc_t e = exp_of(-(z < acc_t(0) ? -z : z));
  const acc_t upper = acc_t(1) / (acc_t(1) + e);
  return z < acc_t(0) ? e * upper : upper;
}

// How the forward reads the bias: none, one row shared by every output row (bias (out,), (1, out), (1, 1)),
// or a row per output row (per-sample (N, out), ...), located through the RowMap.
enum class BiasLayout { kNone, kSharedRow, kPerRow };

// ---- forward epilogue ---------------------------------------------------------------------------------
// out[r, c] = sigmoid(out[r, c] + bias(r, c)) in place over the contiguous (rows, cols) GEMM output,
// computed in acc_t (float for bfloat16/float16).
template <typename scalar_t, BiasLayout layout>
__global__ void bias_sigmoid_kernel(scalar_t* out, int64_t rows, int64_t cols, RowMap bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const scalar_t* bias_data = static_cast<const scalar_t*>(bias.data);
  const int64_t bias_col = c * bias.col_stride;
  acc_t shared_bias = acc_t(0);
  if constexpr (layout == BiasLayout::kSharedRow) shared_bias = static_cast<acc_t>(bias_data[bias_col]);
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t r = blockIdx.y * static_cast<int64_t>(blockDim.y) + threadIdx.y; r < rows; r += row_step) {
    const int64_t i = r * cols + c;
    acc_t b = shared_bias;
    if constexpr (layout == BiasLayout::kPerRow) b = static_cast<acc_t>(bias_data[row_start(bias, r) + bias_col]);
    out[i] = static_cast<scalar_t>(stable_sigmoid(static_cast<acc_t>(out[i]) + b));
  }
}

// ---- backward elementwise pass + bias-gradient partial sums -------------------------------------------
// With z = x W^T + b and y = sigmoid(z):
//   dy/dz = sigmoid'(z) = sigmoid(z) (1 - sigmoid(z)) = y (1 - y)
//   dz[r, c] = dy[r, c] * y[r, c] * (1 - y[r, c])            (chain rule, elementwise; dy read through its
//                                                             broadcast strides, e.g. zero-stride from y.sum())
//   db[c]    = sum_r dz[r, c]                                  (bias (out,) broadcast along the rows)
// Each thread keeps the sum of its own rows of column c in acc_t; the block adds its threads' sums in
// threadIdx.y order and writes one partial per (blockIdx.y, c) to block_sums (nullptr: no bias gradient).
template <typename scalar_t>
__global__ void sigmoid_backward_kernel(
    scalar_t* grad_z, RowMap grad_out, const scalar_t* y, int64_t rows, int64_t cols,
    at::opmath_type<scalar_t>* block_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t thread_sums[kThreads];
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool in_range = c < cols;
  acc_t column_sum = acc_t(0);
  if (in_range) {
    const scalar_t* dy_data = static_cast<const scalar_t*>(grad_out.data);
    const int64_t dy_col = c * grad_out.col_stride;
    const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
    for (int64_t r = blockIdx.y * static_cast<int64_t>(blockDim.y) + threadIdx.y; r < rows; r += row_step) {
      const int64_t i = r * cols + c;
      const acc_t dy = static_cast<acc_t>(dy_data[row_start(grad_out, r) + dy_col]);
      const acc_t yv = static_cast<acc_t>(y[i]);
      const acc_t dz = dy * yv * (acc_t(1) - yv);
      grad_z[i] = static_cast<scalar_t>(dz);
      column_sum += dz;
    }
  }
  if (block_sums == nullptr) return;  // the same for the whole block: no thread is left at the barrier
  thread_sums[threadIdx.y * blockDim.x + threadIdx.x] = column_sum;
  __syncthreads();
  if (threadIdx.y == 0 && in_range) {
    acc_t total = acc_t(0);
    for (unsigned ty = 0; ty < blockDim.y; ++ty) total += thread_sums[ty * blockDim.x + threadIdx.x];
    block_sums[blockIdx.y * cols + c] = total;
  }
}

// db[c] = sum over blocks b, in order, of block_sums[b, c]; written in the bias's dtype.
template <typename scalar_t>
__global__ void sum_block_columns_kernel(
    const at::opmath_type<scalar_t>* block_sums, int64_t blocks, int64_t cols, scalar_t* grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  acc_t total = acc_t(0);
  for (int64_t b = 0; b < blocks; ++b) total += block_sums[b * cols + c];
  grad_bias[c] = static_cast<scalar_t>(total);
}

// ---- ops ----------------------------------------------------------------------------------------------
at::Tensor linear_sigmoid_forward_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const LinearSigmoidShape shape = check_linear_sigmoid_forward(input, weight, bias);
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor out = at::empty({shape.rows, shape.out_features}, input.options());
  at::mm_out(out, input.reshape({shape.rows, shape.in_features}), weight.t());
  if (out.numel() == 0) return out.view(shape.output_sizes);

  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor bias_storage;
  RowMap bias_map;
  if (has_bias) bias_map = make_row_map(*bias, shape.output_sizes, bias_storage);
  const BiasLayout layout =
      !has_bias ? BiasLayout::kNone : (bias_map.rows_repeat() ? BiasLayout::kSharedRow : BiasLayout::kPerRow);
  const ColumnTiling tiling = column_tiling(shape.rows, shape.out_features);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "linear_sigmoid_forward_cuda", [&] {
    scalar_t* data = out.mutable_data_ptr<scalar_t>();
    switch (layout) {
      case BiasLayout::kNone:
        bias_sigmoid_kernel<scalar_t, BiasLayout::kNone>
            <<<tiling.grid, tiling.block, 0, stream>>>(data, shape.rows, shape.out_features, bias_map);
        break;
      case BiasLayout::kSharedRow:
        bias_sigmoid_kernel<scalar_t, BiasLayout::kSharedRow>
            <<<tiling.grid, tiling.block, 0, stream>>>(data, shape.rows, shape.out_features, bias_map);
        break;
      case BiasLayout::kPerRow:
        bias_sigmoid_kernel<scalar_t, BiasLayout::kPerRow>
            <<<tiling.grid, tiling.block, 0, stream>>>(data, shape.rows, shape.out_features, bias_map);
        break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.view(shape.output_sizes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_sigmoid_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    at::OptionalIntArrayRef bias_sizes, std::array<bool, 3> output_mask) {
  const LinearSigmoidShape shape = check_linear_sigmoid_backward(grad_output, input, weight, output, bias_sizes);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const bool want_input = output_mask[0];
  const bool want_weight = output_mask[1];
  const bool want_bias = output_mask[2] && bias_sizes.has_value();
  const auto nothing = [&] { return unrequested_output(input); };
  if (!want_input && !want_weight && !want_bias) return {nothing(), nothing(), nothing()};

  const bool fuse_bias = want_bias && bias_is_row_vector(*bias_sizes, shape.out_features);
  at::Tensor grad_z = at::empty({shape.rows, shape.out_features}, input.options());
  at::Tensor fused_grad_bias;
  if (grad_z.numel() > 0) {
    at::Tensor grad_out_storage;
    const RowMap grad_out_map = make_row_map(grad_output, shape.output_sizes, grad_out_storage);
    const at::Tensor y = output.reshape({shape.rows, shape.out_features}).contiguous();
    const ColumnTiling tiling = column_tiling(shape.rows, shape.out_features);
    at::Tensor block_sums;
    if (fuse_bias) {
      fused_grad_bias = at::empty(*bias_sizes, input.options());
      block_sums = at::empty(
          {static_cast<int64_t>(tiling.grid.y), shape.out_features},
          input.options().dtype(at::toOpMathType(input.scalar_type())));
    }
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "linear_sigmoid_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      acc_t* sums = fuse_bias ? block_sums.mutable_data_ptr<acc_t>() : nullptr;
      sigmoid_backward_kernel<scalar_t><<<tiling.grid, tiling.block, 0, stream>>>(
          grad_z.mutable_data_ptr<scalar_t>(), grad_out_map, y.const_data_ptr<scalar_t>(), shape.rows,
          shape.out_features, sums);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (fuse_bias) {
        const unsigned col_blocks = static_cast<unsigned>(ceil_div(shape.out_features, kThreads));
        sum_block_columns_kernel<scalar_t><<<col_blocks, kThreads, 0, stream>>>(
            sums, static_cast<int64_t>(tiling.grid.y), shape.out_features, fused_grad_bias.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }

  at::Tensor grad_input = nothing(), grad_weight = nothing(), grad_bias = nothing();
  if (want_input) grad_input = at::mm(grad_z, weight).view(input.sizes());
  if (want_weight) grad_weight = at::mm(grad_z.t(), input.reshape({shape.rows, shape.in_features}));
  if (want_bias) {
    if (fused_grad_bias.defined()) {
      grad_bias = fused_grad_bias;
    } else {
      // A general broadcast bias (per-sample (N, out), (1, 1), ...), or an empty output: dz summed to the
      // bias's shape by ATen's reduction (deterministic).
      grad_bias = at::sum_to(grad_z.view(shape.output_sizes), *bias_sizes).clone(at::MemoryFormat::Contiguous);
    }
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_manualbp, CUDA, m) {
  m.impl("linear_sigmoid_forward", &linear_sigmoid_forward_cuda);
  m.impl("linear_sigmoid_backward", &linear_sigmoid_backward_cuda);
}

}  // namespace torch_manualbp
