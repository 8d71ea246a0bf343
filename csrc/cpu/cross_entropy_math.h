// What the two layouts of the SoftmaxCrossEntropy CPU loops share (softmax_cross_entropy_rows_kernel.cpp,
// softmax_cross_entropy_spatial_kernel.cpp): the exponential, the loss of one position (from the math it
// shares with the LinearCrossEntropy row kernel, cpu/cross_entropy_position.h) and the reduction of the
// per-block loss sums, the softcap applied to a block of logits and to its gradient, the per-position
// scales of the gradient, and the dispatch from a problem to the compile-time choices of a loop. Included
// only by the per-SIMD-level kernel files (compiled with CPU_CAPABILITY set, see cpu/dispatch.h). The
// letters are those of the derivation above the ops in csrc/softmax_cross_entropy.cpp:
//   x  logits of one position (after the softcap, when there is one),  m = max_c x_c,
//   s = sum_c exp(x_c - m),  lse = m + log s,
//   a_c the coefficients of the linear term, A = sum_c a_c,  lin = sum_c a_c (x_c - m).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "cpu/cross_entropy_position.h"
#include "cpu/fast_exp.h"
#include "cpu/softmax_cross_entropy_kernel.h"
#include "cpu/vec_helpers.h"

namespace torch_manualbp::cpu::CPU_CAPABILITY {

// The exponential of every kernel: exp_fast (cpu/fast_exp.h), ATen's exp_u20 polynomial (the one ATen's
// own softmax kernels use) in fewer instructions on AVX2, instead of Sleef's exp (Vectorized::exp, 1 ulp).
// Measured on the AVX2 (Zen 1) machine of the README: Sleef 1.76, exp_u20 1.25, exp_fast 0.95 ns per
// element on one core; exp_u20 and exp_fast 4.7 ulp worst over [-87, 0] against Sleef's 0.97, and end to
// end no visible difference (loss 2.3e-7 relative, gradient 4.4e-7 mean relative error against float64
// with either). Its arguments here are x - ref (kept only where at most kMaxReferenceGap) and x - m
// (<= 0): -inf gives exactly 0 (masked classes have probability 0), tiny results flush to 0. It does
// not propagate NaN and clamps large arguments, so no value it returns for NaN or +inf is ever used:
// rows holding NaN or +inf are detected from their max and written as NaN explicitly, as torch gives
// them. For float64 it is Sleef's exp.

inline int64_t class_index(const void* target, c10::ScalarType dtype, int64_t position) {
  return dtype == c10::kByte ? static_cast<int64_t>(static_cast<const uint8_t*>(target)[position])
                             : static_cast<const int64_t*>(target)[position];
}

inline void check_class_index(int64_t t, int64_t classes) {
  TORCH_CHECK_INDEX(t >= 0 && t < classes, "Target ", t, " is out of bounds.");
}

// `count` <= Vec::size() elements, zero past count.
template <typename Vec>
inline Vec load_lanes(const typename Vec::value_type* p, int64_t count) {
  return count == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, count);
}

// The constants of the call (cpu/cross_entropy_position.h).
template <typename acc_t>
inline LossConstants<acc_t> loss_constants(const CrossEntropyProblem& problem) {
  return LossConstants<acc_t>(
      problem.classes, problem.weight, problem.label_smoothing, problem.lse_square_scale, problem.softcap);
}

// The logits of `n` consecutive classes as the loss sees them, in acc_t: z' = s tanh(x / s) written into `dst`
// (converted first for float16/bfloat16). Only called with a softcap.
template <typename T, typename acc_t = at::opmath_type<T>>
inline void softcap_into(const T* src, int64_t n, acc_t* dst, const LossConstants<acc_t>& k) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const acc_t* x = dst;
  if constexpr (std::is_same_v<T, acc_t>) {
    x = src;
  } else {
    at::vec::convert(src, dst, n);
  }
  for (int64_t c = 0; c < n; c += V) {
    const int64_t count = std::min<int64_t>(V, n - c);
    softcapped(load_lanes<Vec>(x + c, count), k).store(dst + c, count);
  }
}

// grad_c *= dz'_c/dz_c = 1 - (z'_c / s)^2 for `n` classes, z' the softcapped logits the gradient was formed from.
template <typename acc_t>
inline void scale_by_softcap_derivative(acc_t* grad, const acc_t* softcapped_logits, int64_t n, const LossConstants<acc_t>& k) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  for (int64_t c = 0; c < n; c += V) {
    const int64_t count = std::min<int64_t>(V, n - c);
    const Vec scaled = load_lanes<Vec>(grad + c, count) * softcap_derivative(load_lanes<Vec>(softcapped_logits + c, count), k);
    scaled.store(grad + c, count);
  }
}

// ---- forward: the loss of a position, the reduction of the loss --------------------------------------

// A sum's exponentials may be taken relative to a reference below its max by at most this much:
// exp(64) * kRowBlock (a block of a row) or exp(64) * C (a column) stays far from float's overflow.
constexpr double kMaxReferenceGap = 64.0;

// The loss of one position from its sums (see the derivation in csrc/softmax_cross_entropy.cpp):
//   cross-entropy  index:        (1 - eps) w_t ((m - x_t) + log s) + (eps / C) (W log s - lin)     ignored: 0
//                  probability:  A log s - lin
//   z-loss         lambda lse^2                                                                      ignored: 0
// and their weights in the 'mean' normalizers: w_t (0 when ignored) or 1 for the cross-entropy, 1 (0 when
// ignored) for the z-loss. A non-finite row (NaN, +inf or only -inf) has NaN cross-entropy and the z-loss of
// its logsumexp, m itself (NaN or inf, as the composite's torch.logsumexp gives it).
template <typename acc_t>
struct PositionLoss {
  acc_t loss;
  acc_t weight;
  acc_t z_loss;
  acc_t z_count;
};

template <typename acc_t>
inline acc_t position_z_loss(const LossConstants<acc_t>& k, bool finite, acc_t m, acc_t log_sum) {
  return k.lambda > 0 ? z_loss(k, finite ? m + log_sum : m) : acc_t(0);
}

// read_logit(t): the target's logit x_t as the loss sees it (softcapped, when there is a softcap).
template <typename acc_t, Linear kLinear, typename ReadLogit>
inline PositionLoss<acc_t> position_loss(
    const CrossEntropyProblem& problem, const LossConstants<acc_t>& k, int64_t position, bool finite, acc_t m,
    acc_t log_sum, acc_t coef_sum, acc_t lin, const ReadLogit& read_logit) {
  if constexpr (kLinear == Linear::kProbability) {
    const acc_t z = position_z_loss(k, finite, m, log_sum);
    if (k.classes == 0) return {acc_t(0), acc_t(1), z, acc_t(1)};
    const acc_t cross_entropy = position_cross_entropy<kLinear>(k, m, log_sum, lin, coef_sum, acc_t(0), acc_t(0));
    return {finite ? cross_entropy : kNaN<acc_t>, acc_t(1), z, acc_t(1)};
  } else {
    const int64_t t = class_index(problem.target, problem.index_dtype, position);
    if (t == problem.ignore_index) return {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    check_class_index(t, k.classes);
    const acc_t w_t = k.class_weight(t);
    const acc_t z = position_z_loss(k, finite, m, log_sum);
    if (!finite) return {kNaN<acc_t>, w_t, z, acc_t(1)};
    return {position_cross_entropy<kLinear>(k, m, log_sum, lin, coef_sum, w_t, read_logit(t)), w_t, z, acc_t(1)};
  }
}

// The losses of one block of positions: each written out ('none'), or added into the block's partial
// sums, which store() leaves in out.block_sums (and out.z_block_sums) for finish_forward.
template <typename T, typename acc_t = at::opmath_type<T>>
struct BlockLoss {
  const CrossEntropyForwardOutputs& out;
  acc_t loss_sum = 0;
  acc_t weight_sum = 0;
  acc_t z_sum = 0;
  acc_t z_count = 0;

  void add(int64_t position, const PositionLoss<acc_t>& loss) {
    if (out.per_position) {
      static_cast<T*>(out.loss)[position] = static_cast<T>(loss.loss + loss.z_loss);
    } else {
      loss_sum += loss.loss;
      weight_sum += loss.weight;
      z_sum += loss.z_loss;
      z_count += loss.z_count;
    }
  }

  void store(int64_t block) const {
    if (!out.per_position) {
      static_cast<acc_t*>(out.block_sums)[2 * block] = loss_sum;
      static_cast<acc_t*>(out.block_sums)[2 * block + 1] = weight_sum;
    }
    if (out.z_block_sums != nullptr) {
      static_cast<acc_t*>(out.z_block_sums)[2 * block] = z_sum;
      static_cast<acc_t*>(out.z_block_sums)[2 * block + 1] = z_count;
    }
  }
};

// The reduced loss and the normalizer from the per-block partial sums, added in block order:
//   'sum'   sum_i ce_i + sum_i z_i
//   'mean'  sum_i ce_i / normalizer + sum_i z_i / (number of positions whose z-loss counts)
template <typename T, typename acc_t = at::opmath_type<T>>
void finish_forward(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out, int64_t blocks) {
  auto* normalizer = static_cast<acc_t*>(out.normalizer);
  if (out.per_position) {
    normalizer[0] = acc_t(1);
    return;
  }
  const auto in_order = [blocks](const void* block_sums) {
    const auto* sums = static_cast<const acc_t*>(block_sums);
    double total = 0, weight = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      total += sums[2 * b];
      weight += sums[2 * b + 1];
    }
    return std::pair<double, double>(total, weight);
  };
  const auto [total_loss, total_weight] = in_order(out.block_sums);
  acc_t norm = acc_t(1);
  if (out.mean) {
    norm = problem.probability_target
        ? (problem.classes > 0 ? acc_t(problem.outer * problem.inner) : acc_t(0))
        : acc_t(total_weight);
  }
  normalizer[0] = norm;
  acc_t loss = out.mean ? acc_t(total_loss) / norm : acc_t(total_loss);
  if (out.z_block_sums != nullptr) {
    const auto [total_z, z_count] = in_order(out.z_block_sums);
    loss += out.mean ? acc_t(total_z) / acc_t(z_count) : acc_t(total_z);
  }
  static_cast<T*>(out.loss)[0] = static_cast<T>(loss);
}

// ---- backward: what both layouts compute per position ------------------------------------------------
// Per position i the gradient is  grad_c = (g_i (y_c A_i - b_c) + gz_i 2 lambda lse_i y_c) softcap'_c
// (csrc/softmax_cross_entropy.cpp):
//   index:        A = (1 - eps) w_t + (eps / C) W,   b_c = (eps / C) w_c + (1 - eps) w_t [c == t]
//   probability:  A = sum_c w_c q_c,                 b_c = w_c q_c
// and for probability targets  grad_target_c = g_i (1 - eps) w_c ((m - x_c) + log s).
// g_i = grad_loss (per position, or the one value) / normalizer, gz_i = grad_loss / the z-loss's normalizer,
// softcap'_c = 1 - (x_c / s)^2 (1 without a softcap). The softmax y_c = exp(x_c - m) / s is formed as
// exp(x_c - m) times the per-position factor (g A + gz 2 lambda lse) / s (softmax_factor, s = exp(log s)
// once per position): x - m is exact for every class whose probability is not negligible, so the gradient
// keeps full precision at any logit offset, and costs no more per element than exp(x - lse) would. The
// softcap's factor multiplies a block of the gradient once it is complete (scale_by_softcap_derivative).

template <typename T, typename acc_t = at::opmath_type<T>>
inline acc_t position_scale(const CrossEntropyBackwardArgs& args, int64_t position) {
  const T grad_loss = static_cast<const T*>(args.grad_loss)[args.grad_per_position ? position : 0];
  return static_cast<acc_t>(grad_loss) / static_cast<const acc_t*>(args.normalizer)[0];
}

// gz_i: the upstream gradient over the z-loss's normalizer (0 without a z-loss).
template <typename T, typename acc_t = at::opmath_type<T>>
inline acc_t z_position_scale(const CrossEntropyBackwardArgs& args, const LossConstants<acc_t>& k, int64_t position) {
  if (!(k.lambda > 0)) return acc_t(0);
  const acc_t grad_loss = static_cast<acc_t>(static_cast<const T*>(args.grad_loss)[args.grad_per_position ? position : 0]);
  return args.z_normalizer != nullptr ? grad_loss / static_cast<const acc_t*>(args.z_normalizer)[0] : grad_loss;
}

// Where a block of the gradient is computed in acc_t: in place for float/double, in `buffer` otherwise
// (then stored by store_from_acc).
template <typename T, typename acc_t>
inline acc_t* acc_destination(T* dst, acc_t* buffer) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return dst;
  } else {
    return buffer;
  }
}

template <typename T, typename acc_t>
inline void store_from_acc(const acc_t* src, T* dst, int64_t n) {
  if constexpr (!std::is_same_v<T, acc_t>) at::vec::convert(src, dst, n);
}

// The compile-time choices of a forward loop for this problem: body(TypeTag<scalar_t>(), linear,
// weighted), linear a std::integral_constant<Linear, ...>, weighted a std::bool_constant.
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename Body>
void dispatch_forward(const CrossEntropyProblem& problem, const Body& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, problem.dtype, "softmax_cross_entropy_forward", [&] {
    auto with_linear = [&](auto weighted) {
      if (problem.probability_target) {
        body(TypeTag<scalar_t>(), std::integral_constant<Linear, Linear::kProbability>(), weighted);
      } else if (problem.label_smoothing > 0) {
        body(TypeTag<scalar_t>(), std::integral_constant<Linear, Linear::kClassWeight>(), weighted);
      } else {
        body(TypeTag<scalar_t>(), std::integral_constant<Linear, Linear::kNone>(), weighted);
      }
    };
    if (problem.weight != nullptr) {
      with_linear(std::true_type());
    } else {
      with_linear(std::false_type());
    }
  });
}

// The same for a backward loop: body(TypeTag<scalar_t>(), probability, weighted), both std::bool_constant.
template <typename Body>
void dispatch_backward(const CrossEntropyProblem& problem, const Body& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, problem.dtype, "softmax_cross_entropy_backward", [&] {
    auto with_weight = [&](auto probability) {
      if (problem.weight != nullptr) {
        body(TypeTag<scalar_t>(), probability, std::true_type());
      } else {
        body(TypeTag<scalar_t>(), probability, std::false_type());
      }
    };
    if (problem.probability_target) {
      with_weight(std::true_type());
    } else {
      with_weight(std::false_type());
    }
  });
}

// The loops of each layout, called by the kernel table (softmax_cross_entropy_kernel.cpp).
void forward_rows(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out);
void backward_rows(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args);
void forward_spatial(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out);
void backward_spatial(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args);

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
