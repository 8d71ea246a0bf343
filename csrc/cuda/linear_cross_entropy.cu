// LinearCrossEntropy on CUDA: the device-generic chunk driver of csrc/linear_cross_entropy.cpp (where the
// derivation is written out), with cuBLAS doing the GEMMs through ATen, and this row kernel for each chunk of
// logits. One block per row, three sweeps over the row (a row of 32k-256k classes stays in the GPU's L2):
//   (1) m = max_c z'_c          z'_c = s tanh((z_c + b_c) / s)   (softcap s; z + b without it)
//   (2) S = sum_c exp(z'_c - m), and lin = sum_c a_c (z'_c - m), A = sum_c a_c for smoothing / probabilities
//   (3) g_c = (k_ce (y_c A - a_c) + k_z 2 lambda lse y_c) (1 - (z'_c / s)^2), written over the row
// z'_c is recomputed in every sweep rather than stored, so that a bfloat16 row is rounded only once, at the
// gradient. Tokens whose target is ignore_index stay in the chunk (counting them would synchronise with the
// host): their loss and gradient row are zero. Block reductions add in a fixed order: the same bits on every
// run. All arithmetic in acc_t (float for float32, bfloat16, float16; double for float64). No host sync.
//
// The vocab-parallel ops (csrc/vocab_parallel.cpp, whose device-generic drivers these registrations call) use two
// more modes of the same kernel, on a row that holds one rank's block of the classes (class_offset, global
// target indices): partial statistics (sweeps 1 and 2, writing m_r, S_r, lin_r, A_r, z'_t, w_t per row; see
// cpu::PartialStatistic) and the gradient from the given global M, log S, A, lse of each row (sweep 3 alone).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "cpu/linear_cross_entropy_kernel.h"
#include "cuda/device_helpers.cuh"
#include "linear_cross_entropy_driver.h"
#include "vocab_parallel.h"

namespace torch_manualbp {
namespace {

using cuda::block_reduce;
using cuda::block_sum;
using cuda::exp_of;
using cuda::log_of;
using cuda::tanh_of;

constexpr int kRowThreads = 512;

// The NaN-propagating max as a combine of block_reduce: a NaN logit makes the row's max NaN.
struct NanMax {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const {
    return cuda::nan_max(a, b);
  }
};

template <typename scalar_t>
struct RowArgs {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* logits;  // (rows, classes), row stride row_stride
  int64_t rows;
  int64_t classes;
  int64_t row_stride;
  const scalar_t* bias;                // (classes,) or nullptr
  const int64_t* target_index;         // (rows,) or nullptr
  int64_t ignore_index;
  const scalar_t* target_probability;  // (rows, classes) contiguous, or nullptr
  const acc_t* class_weight;           // (classes,) or nullptr
  const acc_t* total_weight;           // one value: sum of the class weights (C without them)
  acc_t keep;                          // 1 - eps
  acc_t smooth;                        // eps / C
  bool smoothing;
  acc_t lambda;                        // z-loss scale
  acc_t softcap;                       // 0: none
  acc_t* cross_entropy;                // (rows,) or nullptr
  acc_t* z_loss;                       // (rows,) or nullptr
  bool want_gradient;
  const acc_t* ce_scale;               // k_ce: one value, or (rows,) when per_row
  const acc_t* z_scale;                // k_z, likewise
  bool per_row;
  scalar_t* grad_target;               // (rows, classes) contiguous, or nullptr
  int64_t class_offset;                // the row's first class (vocab-parallel; 0 otherwise)
  int64_t total_classes;               // target indices lie in [0, total_classes) (= classes unsharded)
  acc_t* statistics;                   // (rows, 6): the partial mode, or nullptr
  const acc_t* given;                  // (rows, 4) global M, log S, A, lse: the given-statistics mode, or nullptr

  __device__ acc_t weight(int64_t c) const { return class_weight != nullptr ? class_weight[c] : acc_t(1); }

  // z'_c of row `row`.
  __device__ acc_t transformed(const scalar_t* row, int64_t c) const {
    acc_t z = static_cast<acc_t>(row[c]);
    if (bias != nullptr) z += static_cast<acc_t>(bias[c]);
    return softcap > 0 ? softcap * tanh_of(z / softcap) : z;
  }

  // a_c: the class weight (index targets with smoothing; eps / C applied by the caller) or w_c q_c.
  __device__ acc_t coefficient(const scalar_t* p_row, int64_t c) const {
    if (p_row == nullptr) return weight(c);
    return weight(c) * (keep * static_cast<acc_t>(p_row[c]) + smooth);
  }
};

// The partial mode after sweep 1 (m the row's max): sweep 2 relative to m (to 0 for a row of only -inf, whose
// S_r is then 0), and the row's PartialStatistic columns; NaN or +inf in the row: NaN partials.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ void partial_statistics(
    const RowArgs<scalar_t>& a, const scalar_t* row, const scalar_t* p_row, int64_t t, acc_t m, acc_t* scratch) {
  const int64_t r = blockIdx.x;
  acc_t* out = a.statistics + r * cpu::kPartialStatistics;
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  if (!(m < inf)) {  // NaN or +inf
    if (threadIdx.x == 0) {
      for (int k = 0; k < cpu::kPartialStatistics; ++k) out[k] = std::numeric_limits<acc_t>::quiet_NaN();
      out[cpu::kPartialTargetWeight] = t >= 0 ? a.weight(t) : acc_t(0);
    }
    return;
  }
  const bool empty = !(m > -inf);
  const acc_t reference = empty ? acc_t(0) : m;
  const bool linear = p_row != nullptr || a.smoothing;
  acc_t sum = 0, lin = 0, coef = 0;
  for (int64_t c = threadIdx.x; c < a.classes; c += blockDim.x) {
    const acc_t d = a.transformed(row, c) - reference;
    sum += exp_of(d);
    if (linear) {
      const acc_t k = a.coefficient(p_row, c);
      lin += k * d;
      coef += k;
    }
  }
  sum = block_sum(sum, scratch);
  if (linear) {
    lin = block_sum(lin, scratch);
    coef = block_sum(coef, scratch);
  }
  if (threadIdx.x == 0) {
    out[cpu::kPartialMax] = m;
    out[cpu::kPartialSum] = sum;
    out[cpu::kPartialLinear] = empty ? acc_t(0) : lin;
    out[cpu::kPartialCoefficient] = p_row != nullptr ? coef : *a.total_weight;
    out[cpu::kPartialTargetLogit] = t >= 0 ? a.transformed(row, t) : acc_t(0);
    out[cpu::kPartialTargetWeight] = t >= 0 ? a.weight(t) : acc_t(0);
  }
}

// Sweep 3: the gradient over the row, in place (each element is read and written by the same thread), from
// the max m, lse, p_coef = (k_ce A + k_z 2 lambda lse) / S; t the target's class in the row (-1: none).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ void write_gradient(
    const RowArgs<scalar_t>& a, scalar_t* row, const scalar_t* p_row, scalar_t* target_row, int64_t t, acc_t m,
    acc_t lse, acc_t p_coef, acc_t k_ce) {
  const acc_t inv_cap = a.softcap > 0 ? acc_t(1) / a.softcap : acc_t(0);
  for (int64_t c = threadIdx.x; c < a.classes; c += blockDim.x) {
    const acc_t z = a.transformed(row, c);
    acc_t k = p_row != nullptr ? a.coefficient(p_row, c) : a.smooth * a.weight(c);
    if (c == t) k += a.keep * a.weight(t);
    acc_t g = exp_of(z - m) * p_coef - k_ce * k;
    if (a.softcap > 0) g *= acc_t(1) - (z * inv_cap) * (z * inv_cap);
    if (target_row != nullptr) target_row[c] = static_cast<scalar_t>(k_ce * a.keep * a.weight(c) * (lse - z));
    row[c] = static_cast<scalar_t>(g);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kRowThreads) rows_kernel(RowArgs<scalar_t> a) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[cuda::kWarpSize];
  const int64_t r = blockIdx.x;
  const int64_t C = a.classes;
  scalar_t* row = a.logits + r * a.row_stride;
  const scalar_t* p_row = a.target_probability != nullptr ? a.target_probability + r * C : nullptr;
  scalar_t* target_row = a.grad_target != nullptr ? a.grad_target + r * C : nullptr;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();

  int64_t t = -1;  // the target's class in this row; -1: probability targets, or a block without it
  if (a.target_index != nullptr) {
    const int64_t t_global = a.target_index[r];
    if (t_global == a.ignore_index) {
      if (threadIdx.x == 0) {
        if (a.cross_entropy != nullptr) a.cross_entropy[r] = acc_t(0);
        if (a.z_loss != nullptr) a.z_loss[r] = acc_t(0);
        if (a.statistics != nullptr) {  // the partials of nothing: m = 0, S = 1, the rest 0
          for (int k = 0; k < cpu::kPartialStatistics; ++k) a.statistics[r * cpu::kPartialStatistics + k] = acc_t(0);
          a.statistics[r * cpu::kPartialStatistics + cpu::kPartialSum] = acc_t(1);
        }
      }
      if (a.want_gradient) {
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) row[c] = scalar_t(0);
      }
      return;
    }
    if (t_global < 0 || t_global >= a.total_classes) {
      // One message per row: the row's first thread stops the kernel; the others never read at t.
      if (threadIdx.x == 0) {
        CUDA_KERNEL_ASSERT_PRINTF(
            false, "linear_cross_entropy: Target %lld is out of bounds (classes: %lld).",
            static_cast<long long>(t_global), static_cast<long long>(a.total_classes));
      }
      return;
    }
    t = t_global - a.class_offset;
    if (t < 0 || t >= C) t = -1;
  }

  if (a.given != nullptr) {
    // The gradient from the given global statistics: sweep 3 alone.
    const acc_t* given = a.given + r * cpu::kGivenStatistics;
    const acc_t M = given[cpu::kGivenMax], log_s = given[cpu::kGivenLogSum];
    const acc_t A = given[cpu::kGivenCoefficient], lse = given[cpu::kGivenLse];
    const acc_t inf = std::numeric_limits<acc_t>::infinity();
    if (!(M > -inf && M < inf && log_s > -inf && log_s < inf)) {
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        row[c] = static_cast<scalar_t>(nan);
        if (target_row != nullptr) target_row[c] = static_cast<scalar_t>(nan);
      }
      return;
    }
    const acc_t k_ce = a.ce_scale[a.per_row ? r : 0];
    const acc_t k_z = a.z_scale[a.per_row ? r : 0];
    const acc_t p_coef = (k_ce * A + k_z * acc_t(2) * a.lambda * lse) * exp_of(-log_s);
    write_gradient(a, row, p_row, target_row, t, M, lse, p_coef, k_ce);
    return;
  }

  // Sweep 1: the max.
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) m = cuda::nan_max(m, a.transformed(row, c));
  m = block_reduce(m, -std::numeric_limits<acc_t>::infinity(), scratch, NanMax{});
  if (a.statistics != nullptr) {
    partial_statistics(a, row, p_row, t, m, scratch);
    return;
  }
  if (!(m > -std::numeric_limits<acc_t>::infinity() && m < std::numeric_limits<acc_t>::infinity())) {
    // NaN, +inf, or only -inf: torch's softmax and loss are NaN.
    if (threadIdx.x == 0) {
      if (a.cross_entropy != nullptr) a.cross_entropy[r] = nan;
      if (a.z_loss != nullptr) a.z_loss[r] = nan;
    }
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      if (a.want_gradient) row[c] = static_cast<scalar_t>(nan);
      if (target_row != nullptr) target_row[c] = static_cast<scalar_t>(nan);
    }
    return;
  }

  // Sweep 2: S, and the linear terms.
  const bool linear = p_row != nullptr || a.smoothing;
  acc_t sum = 0, lin = 0, coef = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const acc_t d = a.transformed(row, c) - m;
    sum += exp_of(d);
    if (linear) {
      const acc_t k = a.coefficient(p_row, c);
      lin += k * d;
      coef += k;
    }
  }
  sum = block_sum(sum, scratch);
  if (linear) {
    lin = block_sum(lin, scratch);
    coef = block_sum(coef, scratch);
  }
  const acc_t log_s = log_of(sum);
  const acc_t lse = m + log_s;
  acc_t ce, coef_sum, z_target = 0;
  if (p_row != nullptr) {
    coef_sum = coef;
    ce = coef_sum * log_s - lin;
  } else {
    z_target = a.transformed(row, t);
    const acc_t w_t = a.weight(t);
    const acc_t nll = (m - z_target) + log_s;
    coef_sum = a.keep * w_t + a.smooth * *a.total_weight;
    ce = a.smoothing ? a.keep * w_t * nll + a.smooth * (*a.total_weight * log_s - lin) : w_t * nll;
  }
  if (threadIdx.x == 0) {
    if (a.cross_entropy != nullptr) a.cross_entropy[r] = ce;
    if (a.z_loss != nullptr) a.z_loss[r] = a.lambda * lse * lse;
  }
  if (!a.want_gradient) return;

  // Sweep 3: the gradient, in place.
  const acc_t k_ce = a.ce_scale[a.per_row ? r : 0];
  const acc_t k_z = a.z_scale[a.per_row ? r : 0];
  const acc_t p_coef = (k_ce * coef_sum + k_z * acc_t(2) * a.lambda * lse) / sum;
  write_gradient(a, row, p_row, target_row, t, m, lse, p_coef, k_ce);
}

void cuda_rows(const LogitsChunkTensors& chunk) {
  const int64_t rows = chunk.logits.size(0);
  if (rows == 0) return;
  const LinearCrossEntropyOptions& options = *chunk.options;
  const at::cuda::CUDAGuard guard(chunk.logits.device());
  const at::ScalarType acc_dtype = at::toOpMathType(chunk.logits.scalar_type());
  const int64_t classes = chunk.logits.size(1);
  const at::Tensor total_weight = chunk.class_weight.defined()
      ? chunk.class_weight.sum()
      : at::full({}, static_cast<double>(classes), chunk.logits.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, chunk.logits.scalar_type(), "linear_cross_entropy_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    RowArgs<scalar_t> a;
    a.logits = chunk.logits.data_ptr<scalar_t>();
    a.rows = rows;
    a.classes = classes;
    a.row_stride = chunk.logits.stride(0);
    a.bias = chunk.bias.defined() ? chunk.bias.const_data_ptr<scalar_t>() : nullptr;
    a.target_index = chunk.target_index.defined() ? chunk.target_index.const_data_ptr<int64_t>() : nullptr;
    a.ignore_index = options.ignore_index;
    a.target_probability =
        chunk.target_probability.defined() ? chunk.target_probability.const_data_ptr<scalar_t>() : nullptr;
    a.class_weight = chunk.class_weight.defined() ? chunk.class_weight.const_data_ptr<acc_t>() : nullptr;
    a.total_weight = total_weight.const_data_ptr<acc_t>();
    a.keep = acc_t(1) - acc_t(options.label_smoothing);
    const int64_t total_classes = chunk.total_classes > 0 ? chunk.total_classes : classes;
    a.smooth = total_classes > 0 ? acc_t(options.label_smoothing) / acc_t(total_classes) : acc_t(0);
    a.smoothing = options.label_smoothing > 0;
    a.lambda = acc_t(options.lse_square_scale);
    a.softcap = acc_t(options.softcap);
    a.cross_entropy = chunk.cross_entropy.defined() ? chunk.cross_entropy.data_ptr<acc_t>() : nullptr;
    a.z_loss = chunk.z_loss.defined() ? chunk.z_loss.data_ptr<acc_t>() : nullptr;
    a.want_gradient = chunk.want_gradient;
    a.ce_scale = chunk.ce_scale.defined() ? chunk.ce_scale.const_data_ptr<acc_t>() : nullptr;
    a.z_scale = chunk.z_scale.defined() ? chunk.z_scale.const_data_ptr<acc_t>() : nullptr;
    a.per_row = chunk.per_row;
    a.grad_target = chunk.grad_target.defined() ? chunk.grad_target.data_ptr<scalar_t>() : nullptr;
    a.class_offset = chunk.class_offset;
    a.total_classes = total_classes;
    a.statistics = chunk.statistics.defined() ? chunk.statistics.data_ptr<acc_t>() : nullptr;
    a.given = chunk.given_statistics.defined() ? chunk.given_statistics.const_data_ptr<acc_t>() : nullptr;
    rows_kernel<scalar_t><<<rows, kRowThreads, 0, at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cuda(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, double lse_square_scale, std::optional<double> softcap,
    std::array<bool, 3> grad_mask, int64_t chunk_budget) {
  const at::cuda::CUDAGuard guard(input.device());
  return linear_cross_entropy_forward_impl(
      input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale,
      softcap, grad_mask, chunk_budget, &cuda_rows);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& linear_bias, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap, std::array<bool, 4> output_mask, int64_t chunk_budget) {
  const at::cuda::CUDAGuard guard(input.device());
  return linear_cross_entropy_backward_impl(
      grad_loss, input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
      lse_square_scale, softcap, output_mask, chunk_budget, &cuda_rows);
}

// The vocab-parallel ops: csrc/vocab_parallel.cpp's drivers with this row kernel.
at::Tensor vocab_parallel_statistics_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
    double label_smoothing, std::optional<double> softcap, int64_t class_offset, int64_t total_classes) {
  const at::cuda::CUDAGuard guard(input.device());
  return vocab_parallel_cross_entropy_statistics_impl(
      input, target, weight, ignore_index, label_smoothing, softcap, class_offset, total_classes, &cuda_rows);
}

std::tuple<at::Tensor, at::Tensor> vocab_parallel_gradient_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const at::Tensor& statistics, const at::Tensor& ce_scale, const at::Tensor& z_scale, int64_t ignore_index,
    double label_smoothing, double lse_square_scale, std::optional<double> softcap, int64_t class_offset,
    int64_t total_classes, std::array<bool, 2> output_mask) {
  const at::cuda::CUDAGuard guard(input.device());
  return vocab_parallel_cross_entropy_gradient_impl(
      input, target, weight, statistics, ce_scale, z_scale, ignore_index, label_smoothing, lse_square_scale, softcap,
      class_offset, total_classes, output_mask, &cuda_rows);
}

at::Tensor vocab_parallel_linear_statistics_cuda(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index, double label_smoothing,
    std::optional<double> softcap, int64_t class_offset, int64_t total_classes, int64_t chunk_budget) {
  const at::cuda::CUDAGuard guard(input.device());
  return vocab_parallel_linear_cross_entropy_statistics_impl(
      input, linear_weight, linear_bias, target, weight, ignore_index, label_smoothing, softcap, class_offset,
      total_classes, chunk_budget, &cuda_rows);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vocab_parallel_linear_gradient_cuda(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& linear_bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, const at::Tensor& statistics,
    const at::Tensor& ce_scale, const at::Tensor& z_scale, int64_t ignore_index, double label_smoothing,
    double lse_square_scale, std::optional<double> softcap, int64_t class_offset, int64_t total_classes,
    std::array<bool, 4> output_mask, int64_t chunk_budget) {
  const at::cuda::CUDAGuard guard(input.device());
  return vocab_parallel_linear_cross_entropy_gradient_impl(
      input, linear_weight, linear_bias, target, weight, statistics, ce_scale, z_scale, ignore_index, label_smoothing,
      lse_square_scale, softcap, class_offset, total_classes, output_mask, chunk_budget, &cuda_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_manualbp, CUDA, m) {
  m.impl("linear_cross_entropy_forward", &forward_cuda);
  m.impl("linear_cross_entropy_backward", &backward_cuda);
  m.impl("vocab_parallel_cross_entropy_statistics", &vocab_parallel_statistics_cuda);
  m.impl("vocab_parallel_cross_entropy_gradient", &vocab_parallel_gradient_cuda);
  m.impl("vocab_parallel_linear_cross_entropy_statistics", &vocab_parallel_linear_statistics_cuda);
  m.impl("vocab_parallel_linear_cross_entropy_gradient", &vocab_parallel_linear_gradient_cuda);
}

}  // namespace torch_manualbp
