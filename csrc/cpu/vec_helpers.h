// SIMD helpers shared by the per-SIMD-level kernel files (compiled with CPU_CAPABILITY set).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

namespace torch_manualbp::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

// Elements a parallel task should get at least, so that threads are not woken for tiny work.
constexpr int64_t kParallelGrainElements = 32768;

inline int64_t row_grain(int64_t cols) {
  return std::max<int64_t>(1, kParallelGrainElements / std::max<int64_t>(cols, 1));
}

// Reduced-precision types (bfloat16, float16) are converted to float in chunks of this many elements.
constexpr int64_t kConvertChunk = 256;

template <typename T>
constexpr bool is_reduced_v = !std::is_same_v<T, at::opmath_type<T>>;

// sigmoid(z) = 1 / (1 + exp(-z)), with ATen's own formula and exponential (Sleef, 1 ulp), so that y is
// bitwise torch.sigmoid: exp(-z) overflowing to inf (z < -88.7 in float32) gives exactly 0, exp(-z)
// vanishing gives exactly 1, NaN stays NaN. ATen's faster exp_u20 was measured too (docs: Performance): the
// epilogue is under 1% of the layer's time next to its GEMMs, so the exact match is worth more.
template <typename acc_t>
inline Vectorized<acc_t> sigmoid_like_torch(const Vectorized<acc_t>& z) {
  const Vectorized<acc_t> one(acc_t(1));
  return one / (one + z.neg().exp());
}

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
