// The math of one cross-entropy position on the CPU, shared by the SoftmaxCrossEntropy loops
// (softmax_cross_entropy_{rows,spatial}_kernel.cpp, through cpu/cross_entropy_math.h) and the LinearCrossEntropy
// row kernel (linear_cross_entropy_kernel.cpp): the constants of a call, the softcap transform of the logits and
// its derivative, the cross-entropy and the z-loss of a position from its sums, and the per-position factors of
// its gradient. The loops around them (which memory, which layout, when the sums are taken) stay with each
// kernel. Included only by the per-SIMD-level kernel files (compiled with CPU_CAPABILITY set, see
// cpu/dispatch.h). The derivations are written above the ops (csrc/softmax_cross_entropy.cpp,
// csrc/linear_cross_entropy.cpp); in their letters, for one position:
//   z' = s tanh(z / s) the logits the softmax sees (softcap s; z' = z without it), m = max_c z'_c,
//   s_sum = sum_c exp(z'_c - m), lse = m + log s_sum, y_c = exp(z'_c - m) / s_sum,
//   a_c the coefficients of the cross-entropy's linear term, A = sum_c a_c, lin = sum_c a_c (z'_c - m),
//   eps the label smoothing, w the class weights (W = sum_c w_c), lambda the z-loss scale.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <array>
#include <cstdint>
#include <limits>

namespace torch_manualbp::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename acc_t>
constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
template <typename acc_t>
constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();

// What multiplies (z'_c - m) in the cross-entropy besides the log-sum-exp term:
//   kNone          index targets without label smoothing: nothing;
//   kClassWeight   index targets with label smoothing: a_c = w_c (1 without weight; eps / C applied apart);
//   kProbability   probability targets: a_c = w_c q_c with q_c = (1 - eps) p_c + eps / C.
enum class Linear { kNone, kClassWeight, kProbability };

template <typename acc_t>
inline acc_t lanes_sum(const Vectorized<acc_t>& v) {
  std::array<acc_t, Vectorized<acc_t>::size()> lanes;
  v.store(lanes.data());
  acc_t total = 0;
  for (acc_t lane : lanes) total += lane;
  return total;
}

// The constants of one call.
template <typename acc_t>
struct LossConstants {
  const acc_t* weight;  // (C,) or nullptr
  int64_t classes;
  acc_t keep;          // 1 - eps
  acc_t smooth;        // eps / C
  acc_t total_weight;  // W = sum_c w_c (C without weight)
  acc_t lambda;        // the z-loss scale (0: no z-loss)
  acc_t softcap;       // s (0: no softcap)
  acc_t inv_softcap;   // 1 / s (0 without)

  LossConstants(int64_t classes_, const void* weight_, double label_smoothing, double lse_square_scale, double softcap_)
      : weight(static_cast<const acc_t*>(weight_)),
        classes(classes_),
        keep(acc_t(1) - acc_t(label_smoothing)),
        smooth(classes_ > 0 ? acc_t(label_smoothing) / acc_t(classes_) : acc_t(0)),
        lambda(acc_t(lse_square_scale)),
        softcap(acc_t(softcap_)),
        inv_softcap(softcap_ > 0 ? acc_t(1) / acc_t(softcap_) : acc_t(0)) {
    total_weight = weight == nullptr ? acc_t(classes) : acc_t(0);
    for (int64_t c = 0; weight != nullptr && c < classes; ++c) total_weight += weight[c];
  }

  acc_t class_weight(int64_t c) const { return weight != nullptr ? weight[c] : acc_t(1); }
  bool softcapped() const { return softcap > 0; }
};

// ---- the softcap: z' = s tanh(z / s), dz'/dz = 1 - tanh^2(z / s) = 1 - (z' / s)^2 ------------------------
// z' is in (-s, s) for every finite z, +-inf give +-s (a masked class is no longer masked, as in the composite
// s * torch.tanh(z / s)), NaN stays NaN.

template <typename acc_t>
inline Vectorized<acc_t> softcapped(const Vectorized<acc_t>& z, const LossConstants<acc_t>& k) {
  return Vectorized<acc_t>(k.softcap) * (z * Vectorized<acc_t>(k.inv_softcap)).tanh();
}

// One logit, through the vector form: bitwise the z' of the vectorised sweeps (the target's z'_t must be the
// value the max and the sums saw, so that (m - z'_t) is exactly 0 when t holds the max).
template <typename acc_t>
inline acc_t softcapped(acc_t z, const LossConstants<acc_t>& k) {
  std::array<acc_t, Vectorized<acc_t>::size()> lanes;
  softcapped(Vectorized<acc_t>(z), k).store(lanes.data());
  return lanes[0];
}

template <typename acc_t>
inline Vectorized<acc_t> softcap_derivative(const Vectorized<acc_t>& softcapped_logit, const LossConstants<acc_t>& k) {
  const Vectorized<acc_t> ratio = softcapped_logit * Vectorized<acc_t>(k.inv_softcap);
  return Vectorized<acc_t>(acc_t(1)) - ratio * ratio;
}

template <typename acc_t>
inline acc_t softcap_derivative(acc_t softcapped_logit, const LossConstants<acc_t>& k) {
  const acc_t ratio = softcapped_logit * k.inv_softcap;
  return acc_t(1) - ratio * ratio;
}

// ---- the loss of a position ---------------------------------------------------------------------------

// A = sum_c a_c of an index target t: (1 - eps) w_t + (eps / C) W.
template <typename acc_t>
inline acc_t index_coef_sum(const LossConstants<acc_t>& k, acc_t w_t) {
  return k.keep * w_t + k.smooth * k.total_weight;
}

// The cross-entropy sum_c a_c (lse - z'_c) of one position from its sums, written so that it keeps full
// precision for logits of any size ((m - z'_t) + log s rather than lse - z'_t):
//   kNone          w_t ((m - z'_t) + log s)
//   kClassWeight   (1 - eps) w_t ((m - z'_t) + log s) + (eps / C) (W log s - lin)
//   kProbability   A log s - lin                 (w_t and target_logit unused; coef_sum = A)
// For index targets w_t is the target's class weight and target_logit its z'_t (coef_sum unused).
template <Linear kLinear, typename acc_t>
inline acc_t position_cross_entropy(
    const LossConstants<acc_t>& k, acc_t m, acc_t log_s, acc_t lin, acc_t coef_sum, acc_t w_t, acc_t target_logit) {
  if constexpr (kLinear == Linear::kProbability) {
    return coef_sum * log_s - lin;
  } else {
    const acc_t nll = (m - target_logit) + log_s;
    if constexpr (kLinear == Linear::kNone) {
      return w_t * nll;
    } else {
      return k.keep * w_t * nll + k.smooth * (k.total_weight * log_s - lin);
    }
  }
}

// The z-loss lambda lse^2 of one position.
template <typename acc_t>
inline acc_t z_loss(const LossConstants<acc_t>& k, acc_t lse) {
  return k.lambda * lse * lse;
}

// ---- the gradient of a position -----------------------------------------------------------------------
// d loss / d z_c = (k_ce (y_c A - a_c) + k_z 2 lambda lse y_c) dz'_c/dz_c
//               = (exp(z'_c - m) F - k_ce a_c) dz'_c/dz_c,     F = (k_ce A + k_z 2 lambda lse) / s_sum
// with k_ce, k_z the upstream gradient over the cross-entropy's and the z-loss's normalizers. F is the
// softmax_factor below (acc_t per position, or Vectorized<acc_t> with one position per lane).
template <typename acc_t, typename Value>
inline Value softmax_factor(
    const LossConstants<acc_t>& k, const Value& k_ce, const Value& coef_sum, const Value& k_z, const Value& lse,
    const Value& inv_sum) {
  return (k_ce * coef_sum + k_z * Value(acc_t(2) * k.lambda) * lse) * inv_sum;
}

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
