// Device-side helpers shared by the CUDA kernels of every layer: launch arithmetic, math overloads for
// the accumulation types (float, double), and deterministic reductions over lanes, warps and blocks.
// Every reduction combines the same values in the same order on every run (no atomics): the results are
// bitwise reproducible.
#pragma once

#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

namespace torch_manualbp::cuda {

constexpr int kWarpSize = 32;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// exp / log / tanh of the accumulation type (float for float, bfloat16, float16; double for double), spelled
// out so that a float never goes through the double routines. These are the functions torch's own CUDA
// kernels call (std::exp(float) is expf): full precision, no fast-math intrinsics.
__device__ __forceinline__ float exp_of(float x) { return ::expf(x); }
__device__ __forceinline__ double exp_of(double x) { return ::exp(x); }
__device__ __forceinline__ float log_of(float x) { return ::logf(x); }
__device__ __forceinline__ double log_of(double x) { return ::log(x); }
__device__ __forceinline__ float tanh_of(float x) { return ::tanhf(x); }
__device__ __forceinline__ double tanh_of(double x) { return ::tanh(x); }

// A max that propagates NaN (fmax would drop it): a NaN logit must make the row's loss NaN, as in torch.
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// The value of the lane `offset` lanes away (lane ^ offset). Every lane of the warp must call it.
__device__ __forceinline__ float shfl_xor(float value, int offset) {
  return __shfl_xor_sync(0xffffffffu, value, offset);
}
__device__ __forceinline__ double shfl_xor(double value, int offset) {
  return __shfl_xor_sync(0xffffffffu, value, offset);
}

// combine over aligned groups of `lanes` lanes (a power of two, at most 32) by butterfly: every lane of a
// group gets the group's result. Every lane of the warp must call it (with the same `lanes`).
template <typename T, typename Combine>
__device__ __forceinline__ T lanes_reduce(T value, int lanes, const Combine& combine) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) value = combine(value, shfl_xor(value, offset));
  return value;
}

struct Plus {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const {
    return a + b;
  }
};

// The thread's index in its (1-, 2- or 3-D) block, x fastest, and the block's size.
__device__ __forceinline__ int flat_thread_index() {
  return static_cast<int>((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x);
}
__device__ __forceinline__ int block_threads() {
  return static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}

// combine over the whole block (its size a multiple of 32, at most 1024 threads): each warp reduces, then
// warp 0 reduces the warps' results in warp order. Every thread returns the result. `scratch` holds 32
// values; the function syncs before reusing it, so back-to-back calls are safe. Every thread must call it.
template <typename T, typename Combine>
__device__ __forceinline__ T block_reduce(T value, T identity, T* scratch, const Combine& combine) {
  const int thread = flat_thread_index();
  const int lane = thread % kWarpSize;
  const int warp = thread / kWarpSize;
  const int warps = block_threads() / kWarpSize;
  value = lanes_reduce(value, kWarpSize, combine);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lanes_reduce(lane < warps ? scratch[lane] : identity, kWarpSize, combine);
    if (lane == 0) scratch[0] = value;
  }
  __syncthreads();
  return scratch[0];
}

template <typename T>
__device__ __forceinline__ T block_sum(T value, T* scratch) {
  return block_reduce(value, T(0), scratch, Plus{});
}

// combine over the threads of a 2-D block that share threadIdx.x (a column of the block), as a fixed
// pairwise tree over threadIdx.y (blockDim.y a power of two): level k combines y with y + blockDim.y / 2^k.
// Every thread returns its column's result. `scratch` holds blockDim.x * blockDim.y values; the function
// syncs before reusing it. Every thread of the block must call it.
template <typename T, typename Combine>
__device__ __forceinline__ T tree_reduce_y(T value, T* scratch, const Combine& combine) {
  if (blockDim.y == 1) return value;
  const unsigned x = threadIdx.x, y = threadIdx.y, width = blockDim.x;
  __syncthreads();  // scratch may still be read by a previous call
  scratch[y * width + x] = value;
  for (unsigned stride = blockDim.y / 2; stride > 0; stride /= 2) {
    __syncthreads();
    if (y < stride) {
      value = combine(value, scratch[(y + stride) * width + x]);
      scratch[y * width + x] = value;
    }
  }
  __syncthreads();
  return scratch[x];
}

}  // namespace torch_manualbp::cuda
