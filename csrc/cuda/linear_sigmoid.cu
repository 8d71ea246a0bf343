// LinearSigmoid on CUDA: y = sigmoid(x @ W^T + b), the same algorithm as the CPU op (csrc/linear_sigmoid.cpp).
//
// Forward: one cuBLAS GEMM (through ATen) writes z = x @ W^T into the output buffer, then one hand-written
// kernel turns it into y = sigmoid(z + b) in place. Saved for backward: x, W, y.
// Backward: one kernel computes dz = dy * y * (1 - y) and, for a bias (out,), per-block column sums of dz;
// a second kernel adds the blocks' sums by a fixed tree per column (no float atomics: bitwise
// reproducible); then dW = dz^T @ x and dx = dz @ W through ATen (cuBLAS).
//
// Both kernels cover the (rows, cols) output with blocks of kThreads threads shaped (tile_cols, tile_rows):
// a thread owns one column and walks rows with a fixed stride, so that a bias (out,) is read once per
// thread, a column sum stays in a register, and no index is divided per element. Consecutive threads
// touch consecutive columns (coalesced). Every kernel is launched with kThreads threads per block, its
// __launch_bounds__ (tools/cuda_resources.py checks the registers of every build against it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <type_traits>

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
// The final bias-gradient sum: columns per block, and slices of the block partials per column (each
// slice a run of at most kMaxBlocks / kSumSlices partials, then a tree over the slices).
constexpr int kSumColumns = 8;
constexpr int kSumSlices = kThreads / kSumColumns;

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

// How a kernel finds where row r of a broadcast matrix (RowMap) starts: kFlat, rows at a fixed stride
// (one coalesced leading dim, or none: r * strides[0]); kNested, leading dims that do not collapse (a
// bias (3, 1) on an output (2, 3, 4)): RowMap::offset, whose divisions run once per row of a block, by
// the row's first thread, not once per element.
enum class RowAccess { kFlat, kNested };

RowAccess row_access(const RowMap& map) {
  return map.ndim <= 1 ? RowAccess::kFlat : RowAccess::kNested;
}

// Calls body(r, start of row r in `map`) for the rows of this thread: threadIdx.y + blockIdx.y *
// blockDim.y, then every gridDim.y * blockDim.y rows. kNested syncs the block, so every thread of the
// block must call it (threads past the last column too).
template <RowAccess kAccess, typename Body>
__device__ __forceinline__ void for_each_row(const RowMap& map, int64_t rows, const Body& body) {
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  const int64_t block_first = blockIdx.y * static_cast<int64_t>(blockDim.y);
  if constexpr (kAccess == RowAccess::kFlat) {
    for (int64_t r = block_first + threadIdx.y; r < rows; r += row_step) body(r, r * map.strides[0]);
  } else {
    __shared__ int64_t row_starts[kThreads];
    for (int64_t first = block_first; first < rows; first += row_step) {  // the same trips for the whole block
      const int64_t r = first + threadIdx.y;
      __syncthreads();  // every thread has read the previous rows' starts
      if (threadIdx.x == 0 && r < rows) row_starts[threadIdx.y] = map.offset(r);
      __syncthreads();
      if (r < rows) body(r, row_starts[threadIdx.y]);
    }
  }
}

// sigmoid(z) = 1 / (1 + exp(-z)), torch's own CUDA formula in the same type (opmath: float for float16 and
// bfloat16), so y is bitwise torch.sigmoid of the same z: exactly 0 where exp(-z) overflows (z below
// about -88.7 in float), 1 where it underflows; NaN stays NaN. The CPU kernel computes the same formula
// (csrc/cpu/vec_helpers.h, sigmoid_like_torch).
template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + exp_of(-z));
}

// How the forward reads the bias: none, one row shared by every output row (bias (out,), (1, out), (1, 1)),
// or a row per output row (per-sample (N, out), ...) located through the RowMap.
enum class BiasLayout { kNone, kSharedRow, kPerRow };

// ---- forward epilogue ---------------------------------------------------------------------------------
// out[r, c] = sigmoid(out[r, c] + bias(r, c)) in place over the contiguous (rows, cols) GEMM output,
// computed in acc_t (float for bfloat16/float16).
template <typename scalar_t, BiasLayout kLayout, RowAccess kAccess>
__global__ void __launch_bounds__(kThreads) bias_sigmoid_kernel(scalar_t* out, int64_t rows, int64_t cols, RowMap bias) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool in_range = c < cols;
  const scalar_t* bias_data = static_cast<const scalar_t*>(bias.data);
  const int64_t bias_col = c * bias.col_stride;
  acc_t shared_bias = acc_t(0);
  if constexpr (kLayout == BiasLayout::kSharedRow) {
    if (in_range) shared_bias = static_cast<acc_t>(bias_data[bias_col]);
  }
  for_each_row<kAccess>(bias, rows, [&](int64_t r, int64_t bias_row) {
    if (!in_range) return;
    const int64_t i = r * cols + c;
    acc_t b = shared_bias;
    if constexpr (kLayout == BiasLayout::kPerRow) b = static_cast<acc_t>(bias_data[bias_row + bias_col]);
    out[i] = static_cast<scalar_t>(sigmoid(static_cast<acc_t>(out[i]) + b));
  });
}

// ---- backward elementwise pass + bias-gradient partial sums -------------------------------------------
// With z = x W^T + b and y = sigmoid(z):
//   dy/dz = sigmoid'(z) = sigmoid(z) (1 - sigmoid(z)) = y (1 - y)
//   dz[r, c] = dy[r, c] * y[r, c] * (1 - y[r, c])            (chain rule, elementwise; dy read through its
//                                                             broadcast strides, e.g. zero-stride from y.sum())
//   db[c]    = sum_r dz[r, c]                                  (bias (out,) broadcast along the rows)
// Each thread keeps the sum of its own rows of column c in acc_t; the block adds its threads' sums by a
// fixed tree over threadIdx.y and writes one partial per (blockIdx.y, c) to block_sums (nullptr: no bias
// gradient).
template <typename scalar_t, RowAccess kAccess>
__global__ void __launch_bounds__(kThreads) sigmoid_backward_kernel(
    scalar_t* grad_z, RowMap grad_out, const scalar_t* y, int64_t rows, int64_t cols,
    at::opmath_type<scalar_t>* block_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kThreads];
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool in_range = c < cols;
  const scalar_t* dy_data = static_cast<const scalar_t*>(grad_out.data);
  const int64_t dy_col = c * grad_out.col_stride;
  acc_t column_sum = acc_t(0);
  for_each_row<kAccess>(grad_out, rows, [&](int64_t r, int64_t dy_row) {
    if (!in_range) return;
    const int64_t i = r * cols + c;
    const acc_t dy = static_cast<acc_t>(dy_data[dy_row + dy_col]);
    const acc_t yv = static_cast<acc_t>(y[i]);
    const acc_t dz = dy * yv * (acc_t(1) - yv);
    grad_z[i] = static_cast<scalar_t>(dz);
    column_sum += dz;
  });
  if (block_sums == nullptr) return;  // the same for the whole block: no thread is left at a barrier
  const acc_t total = cuda::tree_reduce_y(column_sum, scratch, cuda::Plus{});
  if (threadIdx.y == 0 && in_range) block_sums[blockIdx.y * cols + c] = total;
}

// db[c] = the sum over blocks b of block_sums[b, c], in the bias's dtype: a (kSumColumns, kSumSlices)
// block, slice y adding the partials of a contiguous run of blocks in order, then a fixed tree over the
// slices (the same additions on every run; no chain longer than kMaxBlocks / kSumSlices).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sum_block_columns_kernel(
    const at::opmath_type<scalar_t>* block_sums, int64_t blocks, int64_t cols, scalar_t* grad_bias) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kThreads];
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t run = (blocks + blockDim.y - 1) / blockDim.y;
  const int64_t begin = threadIdx.y * run;
  const int64_t end = std::min(blocks, begin + run);
  acc_t partial = acc_t(0);
  if (c < cols) {
    for (int64_t b = begin; b < end; ++b) partial += block_sums[b * cols + c];
  }
  const acc_t total = cuda::tree_reduce_y(partial, scratch, cuda::Plus{});
  if (threadIdx.y == 0 && c < cols) grad_bias[c] = static_cast<scalar_t>(total);
}

// Calls launch(std::integral_constant<RowAccess, access>) for a runtime RowAccess.
template <typename Launch>
void for_row_access(RowAccess access, const Launch& launch) {
  if (access == RowAccess::kFlat) {
    launch(std::integral_constant<RowAccess, RowAccess::kFlat>{});
  } else {
    launch(std::integral_constant<RowAccess, RowAccess::kNested>{});
  }
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
    auto launch = [&](auto kernel) {
      kernel<<<tiling.grid, tiling.block, 0, stream>>>(data, shape.rows, shape.out_features, bias_map);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    switch (layout) {
      case BiasLayout::kNone:
        launch(bias_sigmoid_kernel<scalar_t, BiasLayout::kNone, RowAccess::kFlat>);
        break;
      case BiasLayout::kSharedRow:
        launch(bias_sigmoid_kernel<scalar_t, BiasLayout::kSharedRow, RowAccess::kFlat>);
        break;
      case BiasLayout::kPerRow:
        for_row_access(row_access(bias_map), [&](auto access) {
          launch(bias_sigmoid_kernel<scalar_t, BiasLayout::kPerRow, decltype(access)::value>);
        });
        break;
    }
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
      for_row_access(row_access(grad_out_map), [&](auto access) {
        sigmoid_backward_kernel<scalar_t, decltype(access)::value><<<tiling.grid, tiling.block, 0, stream>>>(
            grad_z.mutable_data_ptr<scalar_t>(), grad_out_map, y.const_data_ptr<scalar_t>(), shape.rows,
            shape.out_features, sums);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      if (fuse_bias) {
        const unsigned col_blocks = static_cast<unsigned>(ceil_div(shape.out_features, kSumColumns));
        sum_block_columns_kernel<scalar_t><<<col_blocks, dim3(kSumColumns, kSumSlices), 0, stream>>>(
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
