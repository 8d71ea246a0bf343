// What the two layouts of the SoftmaxCrossEntropy CPU loops share (softmax_cross_entropy_rows_kernel.cpp,
// softmax_cross_entropy_spatial_kernel.cpp): the exponential, the per-call loss constants, the loss of one
// position and the reduction of the per-block loss sums, the per-position factor of the gradient, and the
// dispatch from a problem to the compile-time choices of a loop. Included only by the per-SIMD-level
// kernel files (compiled with CPU_CAPABILITY set, see cpu/dispatch.h). The letters are those of the
// derivation above the ops in csrc/softmax_cross_entropy.cpp:
//   x  logits of one position,  m = max_c x_c,  s = sum_c exp(x_c - m),  lse = m + log s,
//   a_c the coefficients of the linear term, A = sum_c a_c,  lin = sum_c a_c (x_c - m).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "cpu/fast_exp.h"
#include "cpu/softmax_cross_entropy_kernel.h"
#include "cpu/vec_helpers.h"

namespace torch_manualbp::cpu::CPU_CAPABILITY {

template <typename acc_t>
constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
template <typename acc_t>
constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();

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

// What multiplies (x_c - m) in the loss besides the logsumexp term:
//   kNone               index targets without label smoothing: nothing;
//   kClassWeight        index targets with label smoothing: a_c = w_c (1 without weight);
//   kTargetProbability  probability targets: a_c = w_c q_c with q_c = (1 - eps) p_c + eps / C.
enum class Linear { kNone, kClassWeight, kTargetProbability };

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

// Per-call constants of the loss.
template <typename acc_t>
struct LossConstants {
  const acc_t* weight;  // (C,) or nullptr
  int64_t classes;
  acc_t keep;    // 1 - eps
  acc_t smooth;  // eps / C
  acc_t total_weight;  // W = sum_c w_c (C without weight)

  explicit LossConstants(const CrossEntropyProblem& problem)
      : weight(static_cast<const acc_t*>(problem.weight)),
        classes(problem.classes),
        keep(acc_t(1) - acc_t(problem.label_smoothing)),
        smooth(problem.classes > 0 ? acc_t(problem.label_smoothing) / acc_t(problem.classes) : acc_t(0)) {
    if (weight == nullptr) {
      total_weight = acc_t(classes);
    } else {
      total_weight = 0;
      for (int64_t c = 0; c < classes; ++c) total_weight += weight[c];
    }
  }

  acc_t class_weight(int64_t c) const { return weight != nullptr ? weight[c] : acc_t(1); }
};

// ---- forward: the loss of a position, the reduction of the loss --------------------------------------

// A sum's exponentials may be taken relative to a reference below its max by at most this much:
// exp(64) * kRowBlock (a block of a row) or exp(64) * C (a column) stays far from float's overflow.
constexpr double kMaxReferenceGap = 64.0;

// The loss of one position from its sums (see the derivation in csrc/softmax_cross_entropy.cpp):
//   index:        (1 - eps) w_t ((m - x_t) + log s) + (eps / C) (W log s - lin)     ignored: 0
//   probability:  A log s - lin
// and its weight in the 'mean' normalizer: w_t (0 when ignored) or 1.
template <typename acc_t>
struct PositionLoss {
  acc_t loss;
  acc_t weight;
};

template <typename acc_t, Linear kLinear, typename ReadLogit>
inline PositionLoss<acc_t> position_loss(
    const CrossEntropyProblem& problem, const LossConstants<acc_t>& k, int64_t position, bool finite, acc_t m,
    acc_t log_sum, acc_t coef_sum, acc_t lin, const ReadLogit& read_logit) {
  if constexpr (kLinear == Linear::kTargetProbability) {
    if (k.classes == 0) return {acc_t(0), acc_t(1)};
    return {finite ? coef_sum * log_sum - lin : kNaN<acc_t>, acc_t(1)};
  } else {
    const int64_t t = class_index(problem.target, problem.index_dtype, position);
    if (t == problem.ignore_index) return {acc_t(0), acc_t(0)};
    check_class_index(t, k.classes);
    const acc_t w_t = k.class_weight(t);
    if (!finite) return {kNaN<acc_t>, w_t};
    const acc_t nll = (m - read_logit(t)) + log_sum;
    if constexpr (kLinear == Linear::kNone) {
      return {w_t * nll, w_t};
    } else {
      return {k.keep * w_t * nll + k.smooth * (coef_sum * log_sum - lin), w_t};
    }
  }
}

// The losses of one block of positions: each written out ('none'), or added into the block's partial
// sums, which store() leaves in out.block_sums for finish_forward.
template <typename T, typename acc_t = at::opmath_type<T>>
struct BlockLoss {
  const CrossEntropyForwardOutputs& out;
  acc_t loss_sum = 0;
  acc_t weight_sum = 0;

  void add(int64_t position, const PositionLoss<acc_t>& loss) {
    if (out.per_position) {
      static_cast<T*>(out.loss)[position] = static_cast<T>(loss.loss);
    } else {
      loss_sum += loss.loss;
      weight_sum += loss.weight;
    }
  }

  void store(int64_t block) const {
    if (!out.per_position) {
      static_cast<acc_t*>(out.block_sums)[2 * block] = loss_sum;
      static_cast<acc_t*>(out.block_sums)[2 * block + 1] = weight_sum;
    }
  }
};

// The reduced loss and the normalizer from the per-block partial sums, added in block order.
template <typename T, typename acc_t = at::opmath_type<T>>
void finish_forward(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out, int64_t blocks) {
  auto* normalizer = static_cast<acc_t*>(out.normalizer);
  if (out.per_position) {
    normalizer[0] = acc_t(1);
    return;
  }
  const auto* sums = static_cast<const acc_t*>(out.block_sums);
  double total_loss = 0, total_weight = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    total_loss += sums[2 * b];
    total_weight += sums[2 * b + 1];
  }
  acc_t norm = acc_t(1);
  if (out.mean) {
    norm = problem.probability_target
        ? (problem.classes > 0 ? acc_t(problem.outer * problem.inner) : acc_t(0))
        : acc_t(total_weight);
  }
  normalizer[0] = norm;
  static_cast<T*>(out.loss)[0] = static_cast<T>(out.mean ? acc_t(total_loss) / norm : acc_t(total_loss));
}

// ---- backward: what both layouts compute per position ------------------------------------------------
// Per position i the gradient is  grad_c = g_i (y_c A_i - b_c)  (csrc/softmax_cross_entropy.cpp):
//   index:        A = (1 - eps) w_t + (eps / C) W,   b_c = (eps / C) w_c + (1 - eps) w_t [c == t]
//   probability:  A = sum_c w_c q_c,                 b_c = w_c q_c
// and for probability targets  grad_target_c = g_i (1 - eps) w_c ((m - x_c) + log s).
// g_i = grad_loss (per position, or the one value) / normalizer. The softmax y_c = exp(x_c - m) / s is
// formed as exp(x_c - m) times the per-position factor gA / s (s = exp(log s) once per position): x - m
// is exact for every class whose probability is not negligible, so the gradient keeps full precision at
// any logit offset, and costs no more per element than exp(x - lse) would.

template <typename T, typename acc_t = at::opmath_type<T>>
inline acc_t position_scale(const CrossEntropyBackwardArgs& args, int64_t position) {
  const T grad_loss = static_cast<const T*>(args.grad_loss)[args.grad_per_position ? position : 0];
  return static_cast<acc_t>(grad_loss) / static_cast<const acc_t*>(args.normalizer)[0];
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
        body(TypeTag<scalar_t>(), std::integral_constant<Linear, Linear::kTargetProbability>(), weighted);
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
