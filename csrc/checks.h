// Argument checks shared by every op and backend: each names the op, the argument, what was expected
// and what came, so that a direct torch.ops call is as safe as the module.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace torch_manualbp {

// A floating-point tensor: float32, float64, bfloat16 or float16 (TypeError otherwise, e.g. int or bool).
inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(
      t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kBFloat16 ||
          t.scalar_type() == at::kHalf,
      op, ": expected ", name, " to be a floating-point tensor (float32, float64, bfloat16 or float16), but got ",
      name, " of dtype ", t.scalar_type());
}

// `t` has the dtype of `ref` (as torch's own ops, a RuntimeError).
inline void check_same_dtype(
    const char* op, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(
      t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " to have the same dtype as ", ref_name, " (",
      ref.scalar_type(), "), but got ", name, " of dtype ", t.scalar_type());
}

// `t` lives on the device of `ref`.
inline void check_same_device(
    const char* op, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(
      t.device() == ref.device(), op, ": expected ", name, " to be on the same device as ", ref_name, " (",
      ref.device(), "), but got ", name, " on ", t.device());
}

// `t` has exactly `sizes`.
inline void check_sizes(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef sizes) {
  TORCH_CHECK(
      t.sizes() == sizes, op, ": expected ", name, " of shape ", sizes, ", but got ", name, " of shape ", t.sizes());
}

}  // namespace torch_manualbp
