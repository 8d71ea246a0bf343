// LinearSigmoid CPU loops, compiled once per SIMD level (see cpu/dispatch.h). The GEMMs are ATen's
// (csrc/linear_sigmoid.cpp); these are the passes around them.
#include "cpu/linear_sigmoid_kernel.h"

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/vec_helpers.h"

namespace torch_manualbp::cpu::CPU_CAPABILITY {
namespace {

// ---- forward epilogue -------------------------------------------------------------------------------
// y = sigmoid(z + b) over one row of n elements, in place; the bias is a row (bias != nullptr) or one value.
template <typename acc_t>
void bias_sigmoid_row(acc_t* z, const acc_t* bias, acc_t bias_value, int64_t n) {
  using Vec = Vectorized<acc_t>;
  const Vec bias_splat(bias_value);
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) {
    const Vec b = bias != nullptr ? Vec::loadu(bias + c) : bias_splat;
    sigmoid_like_torch(Vec::loadu(z + c) + b).store(z + c);
  }
  if (c < n) {
    const int64_t rest = n - c;
    const Vec b = bias != nullptr ? Vec::loadu(bias + c, rest) : bias_splat;
    sigmoid_like_torch(Vec::loadu(z + c, rest) + b).store(z + c, rest);
  }
}

template <typename T>
void bias_sigmoid_typed(T* out, int64_t rows, int64_t cols, const RowMap* bias) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* out_row = out + r * cols;
      const T* bias_row = bias != nullptr ? static_cast<const T*>(bias->data) + bias->offset(r) : nullptr;
      const bool bias_is_row = bias_row != nullptr && bias->col_stride == 1 && cols > 1;
      const acc_t bias_value = (bias_row != nullptr && !bias_is_row) ? static_cast<acc_t>(bias_row[0]) : acc_t(0);
      if constexpr (!is_reduced_v<T>) {
        bias_sigmoid_row<acc_t>(out_row, bias_is_row ? bias_row : nullptr, bias_value, cols);
      } else {
        acc_t z[kConvertChunk];
        acc_t b[kConvertChunk];
        for (int64_t c = 0; c < cols; c += kConvertChunk) {
          const int64_t n = std::min(kConvertChunk, cols - c);
          at::vec::convert(out_row + c, z, n);
          if (bias_is_row) at::vec::convert(bias_row + c, b, n);
          bias_sigmoid_row<acc_t>(z, bias_is_row ? b : nullptr, bias_value, n);
          at::vec::convert(z, out_row + c, n);
        }
      }
    }
  });
}

void bias_sigmoid(c10::ScalarType dtype, void* out, int64_t rows, int64_t cols, const RowMap* bias) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "linear_sigmoid_forward", [&] {
    bias_sigmoid_typed<scalar_t>(static_cast<scalar_t*>(out), rows, cols, bias);
  });
}

// ---- backward elementwise pass ----------------------------------------------------------------------
// One row: grad_z = dy * y * (1 - y), and bias_sum += grad_z when bias_sum != nullptr.
// dy is a row (dy != nullptr) or one value repeated (e.g. the zero-stride gradient of y.sum()).
template <typename acc_t>
void sigmoid_grad_row(acc_t* grad_z, const acc_t* dy, acc_t dy_value, const acc_t* y, acc_t* bias_sum, int64_t n) {
  using Vec = Vectorized<acc_t>;
  const Vec one(acc_t(1));
  const Vec dy_splat(dy_value);
  auto step = [&](int64_t c, int64_t count) {
    const Vec yv = Vec::loadu(y + c, count);
    const Vec dyv = dy != nullptr ? Vec::loadu(dy + c, count) : dy_splat;
    const Vec gz = dyv * yv * (one - yv);
    gz.store(grad_z + c, count);
    if (bias_sum != nullptr) (Vec::loadu(bias_sum + c, count) + gz).store(bias_sum + c, count);
  };
  int64_t c = 0;
  for (; c + Vec::size() <= n; c += Vec::size()) step(c, Vec::size());
  if (c < n) step(c, n - c);
}

template <typename T>
void sigmoid_grad_rows(
    T* grad_z, const RowMap& grad_out, const T* y, int64_t begin, int64_t end, int64_t cols,
    at::opmath_type<T>* bias_sum) {
  using acc_t = at::opmath_type<T>;
  for (int64_t r = begin; r < end; ++r) {
    const T* dy_row = static_cast<const T*>(grad_out.data) + grad_out.offset(r);
    const bool dy_is_row = grad_out.col_stride == 1 && cols > 1;
    const acc_t dy_value = dy_is_row ? acc_t(0) : static_cast<acc_t>(dy_row[0]);
    if constexpr (!is_reduced_v<T>) {
      sigmoid_grad_row<acc_t>(grad_z + r * cols, dy_is_row ? dy_row : nullptr, dy_value, y + r * cols, bias_sum, cols);
    } else {
      acc_t gz[kConvertChunk];
      acc_t dy[kConvertChunk];
      acc_t yv[kConvertChunk];
      for (int64_t c = 0; c < cols; c += kConvertChunk) {
        const int64_t n = std::min(kConvertChunk, cols - c);
        if (dy_is_row) at::vec::convert(dy_row + c, dy, n);
        at::vec::convert(y + r * cols + c, yv, n);
        sigmoid_grad_row<acc_t>(gz, dy_is_row ? dy : nullptr, dy_value, yv, bias_sum != nullptr ? bias_sum + c : nullptr, n);
        at::vec::convert(gz, grad_z + r * cols + c, n);
      }
    }
  }
}

template <typename T>
void sigmoid_backward_typed(
    T* grad_z, const RowMap& grad_out, const T* y, int64_t rows, int64_t cols, at::opmath_type<T>* grad_bias,
    at::opmath_type<T>* block_sums) {
  using acc_t = at::opmath_type<T>;
  if (grad_bias == nullptr) {
    at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
      sigmoid_grad_rows<T>(grad_z, grad_out, y, begin, end, cols, nullptr);
    });
    return;
  }
  // Per block of kBiasGradBlockRows rows a partial column sum, then the blocks summed pairwise in a fixed
  // tree: the same additions in the same order for any number of threads, and a rounding error that grows
  // with log2(blocks) (a running sum over blocks lost ~1e-3 relative in float32 at 2**21 rows).
  const int64_t blocks = bias_grad_blocks(rows);
  const int64_t block_grain = std::max<int64_t>(1, row_grain(cols) / kBiasGradBlockRows);
  at::parallel_for(0, blocks, block_grain, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      acc_t* sums = block_sums + block * cols;
      std::fill(sums, sums + cols, acc_t(0));
      const int64_t first = block * kBiasGradBlockRows;
      sigmoid_grad_rows<T>(grad_z, grad_out, y, first, std::min(rows, first + kBiasGradBlockRows), cols, sums);
    }
  });
  using Vec = Vectorized<acc_t>;
  const int64_t col_grain = std::max<int64_t>(Vec::size(), kParallelGrainElements / std::max<int64_t>(blocks, 1));
  at::parallel_for(0, cols, col_grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; c += Vec::size()) {
      const int64_t count = std::min<int64_t>(Vec::size(), end - c);
      for (int64_t stride = 1; stride < blocks; stride *= 2) {
        for (int64_t block = 0; block + stride < blocks; block += 2 * stride) {
          acc_t* sum = block_sums + block * cols + c;
          (Vec::loadu(sum, count) + Vec::loadu(sum + stride * cols, count)).store(sum, count);
        }
      }
      Vec::loadu(block_sums + c, count).store(grad_bias + c, count);
    }
  });
}

void sigmoid_backward(
    c10::ScalarType dtype, void* grad_z, const RowMap& grad_out, const void* y, int64_t rows, int64_t cols,
    void* grad_bias, void* block_sums) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "linear_sigmoid_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    sigmoid_backward_typed<scalar_t>(
        static_cast<scalar_t*>(grad_z), grad_out, static_cast<const scalar_t*>(y), rows, cols,
        static_cast<acc_t*>(grad_bias), static_cast<acc_t*>(block_sums));
  });
}

}  // namespace

extern const LinearSigmoidKernels linear_sigmoid_kernels = {&bias_sigmoid, &sigmoid_backward};

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
