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

// sigmoid(z) without overflow: e = exp(-|z|) lies in (0, 1], and
//   sigmoid(z) = 1 / (1 + e)  for z >= 0,      e / (1 + e)  for z < 0,
// which keeps full relative precision in the lower tail and saturates exactly (z = +-100 gives 1 and ~0).
// The exponential is ATen's exp_u20 (the one its softmax uses): for float about twice as fast as Sleef's
// on AVX2, at most ~20 ulp of error in e, so at most ~20 ulp in sigmoid(z) (about 1e-6 relative;
// docs/bench.md has the measurement); for double it is Sleef's exp. exp_u20 maps NaN to a number, so
// NaN is put back explicitly: NaN stays NaN.
template <typename acc_t>
inline Vectorized<acc_t> stable_sigmoid(const Vectorized<acc_t>& z) {
  const Vectorized<acc_t> one(acc_t(1));
  const Vectorized<acc_t> e = z.abs().neg().exp_u20();
  const Vectorized<acc_t> upper = one / (one + e);
  const Vectorized<acc_t> sigmoid = Vectorized<acc_t>::blendv(upper, e * upper, z < Vectorized<acc_t>(acc_t(0)));
  return Vectorized<acc_t>::blendv(sigmoid, z, z.isnan());
}

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
