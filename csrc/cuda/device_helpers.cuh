// Device-side helpers shared by the CUDA kernels of every layer: launch arithmetic, math overloads for
// the accumulation types (float, double), and deterministic warp/block reductions.
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

// exp / log / log1p of the accumulation type (float for float, bfloat16, float16; double for double),
// spelled out so that a float never goes through the double routines.
__device__ __forceinline__ float exp_of(float x) { return ::expf(x); }
__device__ __forceinline__ double exp_of(double x) { return ::exp(x); }
__device__ __forceinline__ float log_of(float x) { return ::logf(x); }
__device__ __forceinline__ double log_of(double x) { return ::log(x); }

// Sum and max over the 32 lanes of a warp, every lane getting the result. The butterfly pattern adds
// the same values in the same order on every run (deterministic).
template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// A max that propagates NaN (fmax would drop it): a NaN logit must make the row's loss NaN, as in torch.
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

template <typename T>
__device__ __forceinline__ T warp_max(T value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = nan_max(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Block-wide reductions over a 1-D block whose size is a multiple of 32 (at most 1024 threads): each
// warp reduces, then warp 0 reduces the warps' results in warp order. Every thread returns the result.
// `scratch` holds 32 values; the function syncs before reusing it, so back-to-back calls are safe.
template <typename T, typename Combine>
__device__ __forceinline__ T block_reduce(T value, T identity, T* scratch, Combine warp_combine) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  value = warp_combine(value);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = warp_combine(lane < warps ? scratch[lane] : identity);
    if (lane == 0) scratch[0] = value;
  }
  __syncthreads();
  return scratch[0];
}

template <typename T>
__device__ __forceinline__ T block_sum(T value, T* scratch) {
  return block_reduce(value, T(0), scratch, [](T v) { return warp_sum(v); });
}

template <typename T>
__device__ __forceinline__ T block_max(T value, T* scratch) {
  return block_reduce(value, -std::numeric_limits<T>::infinity(), scratch, [](T v) { return warp_max(v); });
}

}  // namespace torch_manualbp::cuda
