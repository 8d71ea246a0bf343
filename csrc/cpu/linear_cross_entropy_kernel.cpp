// LinearCrossEntropy CPU row kernel, compiled once per SIMD level (see cpu/dispatch.h). The GEMMs around it
// are ATen's (csrc/linear_cross_entropy.cpp, where the derivation is written out); in its letters, one row r
// of a chunk holds the logits z_c = (x W^T)_c of one token, and this kernel forms, per row:
//
//   z'_c = s tanh((z_c + b_c) / s)          (softcap s; without it z'_c = z_c + b_c)
//   m = max_c z'_c,  e_c = exp(z'_c - m),  S = sum_c e_c,  log-sum-exp lse = m + log S,  softmax y_c = e_c / S
//   cross-entropy  ce = sum_c a_c (lse - z'_c) = A log S - sum_c a_c (z'_c - m),  A = sum_c a_c
//     index target t:     a_c = w_c (eps / C) + (1 - eps) w_t [c == t]
//                         ce = (1 - eps) w_t ((m - z'_t) + log S) + (eps / C) (W log S - sum_c w_c (z'_c - m))
//     probability p:      a_c = w_c ((1 - eps) p_c + eps / C)
//   z-loss         lambda lse^2
//   gradient       g_c = (k_ce (y_c A - a_c) + k_z 2 lambda lse y_c) * (1 - (z'_c / s)^2)   (last factor: softcap)
//   target grad    k_ce (1 - eps) w_c (lse - z'_c)                                         (probability targets)
//
// The row is L2-resident once the GEMM has written it (a row of 32k-128k classes is 128-512 KiB of float),
// so it is swept three times at the cost of one pass from memory: (1) bias, softcap and the max,
// (2) the exponentials, their sum and the linear terms, keeping e_c in place of z'_c where nothing later
// needs z'_c, (3) the gradient, written over the row. One exponential per logit on the common path (two
// with softcap or a target gradient, which need z' in the last sweep). Rows never depend on each other or
// on the thread that runs them: the results are the same for any thread count. The math of one position
// (the softcap and its derivative, the cross-entropy and z-loss from the sums, the factor of e_c in the
// gradient) is cpu/cross_entropy_position.h, shared with the SoftmaxCrossEntropy loops; the sweeps are this
// file's.
//
// Two more modes serve the vocab-parallel losses (csrc/vocab_parallel.cpp, where the combination is derived),
// whose row holds one rank's block of the classes:
//   partial statistics      sweeps 1 and 2 only, writing m_r, S_r, lin_r, A_r, z_t, w_t (PartialStatistic)
//   gradient from given     sweep 1 (bias and softcap) and sweep 3 with m, S, A, lse replaced by the global
//   statistics              M, S, A, lse of the row's token (GivenStatistic): y_c = exp(z'_c - M) / S
#include "cpu/linear_cross_entropy_kernel.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/cross_entropy_position.h"
#include "cpu/fast_exp.h"
#include "cpu/vec_helpers.h"

namespace torch_manualbp::cpu::CPU_CAPABILITY {
namespace {

// Elements of a probability row converted to acc_t at a time (reduced-precision targets).
constexpr int64_t kTargetBlock = 1024;

// The lanes' maximum; NaN if any lane is NaN.
template <typename acc_t>
inline acc_t lanes_max(const Vectorized<acc_t>& v) {
  std::array<acc_t, Vectorized<acc_t>::size()> lanes;
  v.store(lanes.data());
  acc_t m = -kInf<acc_t>;
  for (acc_t lane : lanes) {
    if (std::isnan(lane)) return lane;
    m = std::max(m, lane);
  }
  return m;
}

template <typename Vec>
inline Vec load(const typename Vec::value_type* p, int64_t count) {
  return count == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, count);
}

template <typename Vec>
inline void store(const Vec& v, typename Vec::value_type* p, int64_t count) {
  if (count == Vec::size()) {
    v.store(p);
  } else {
    v.store(p, count);
  }
}

// What one call knows about every row: LossConstants (cpu/cross_entropy_position.h), shared with the
// SoftmaxCrossEntropy loops, as the cross-entropy, z-loss and softcap math below.
// A block of the classes (vocab-parallel): the smoothing's eps / C is over all total_classes; the total weight
// stays the block's own (W_r, summed over the blocks when they are combined).
template <typename acc_t>
LossConstants<acc_t> row_constants(const LogitsChunk& chunk) {
  LossConstants<acc_t> k(
      chunk.classes, chunk.class_weight, chunk.label_smoothing, chunk.lse_square_scale, chunk.softcap);
  if (chunk.total_classes > 0) k.smooth = acc_t(chunk.label_smoothing) / acc_t(chunk.total_classes);
  return k;
}

// Sweep 1: work_c = z'_c (bias added, softcap applied) written where `store` says, and the row's max.
// `z` is the row in acc_t (the logits row itself, or the converted copy in `work`).
template <typename acc_t, bool kBias, bool kSoftcap>
acc_t transform_and_max(const acc_t* z, const acc_t* bias, acc_t* work, int64_t n, const LossConstants<acc_t>& k) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec max0(-kInf<acc_t>), max1(-kInf<acc_t>);
  auto step = [&](int64_t c, int64_t count) {
    Vec v = load<Vec>(z + c, count);
    if constexpr (kBias) v = v + load<Vec>(bias + c, count);
    if constexpr (kSoftcap) v = softcapped(v, k);
    if constexpr (kBias || kSoftcap) store(v, work + c, count);
    if (count < V) v = Vec::set(Vec(-kInf<acc_t>), v, count);
    return v;
  };
  int64_t c = 0;
  for (; c + 2 * V <= n; c += 2 * V) {
    max0 = at::vec::maximum(max0, step(c, V));
    max1 = at::vec::maximum(max1, step(c + V, V));
  }
  for (; c < n; c += V) max0 = at::vec::maximum(max0, step(c, std::min<int64_t>(V, n - c)));
  return lanes_max(at::vec::maximum(max0, max1));
}

// The probability row's acc_t values for classes [c0, c0 + n): in place for acc_t rows, else converted.
template <typename T, typename acc_t>
inline const acc_t* probability_block(const T* p_row, int64_t c0, int64_t n, acc_t* buffer) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return p_row + c0;
  } else {
    at::vec::convert(p_row + c0, buffer, n);
    return buffer;
  }
}

// Sweep 2's results: S and, for the smoothing / probability terms, lin = sum_c a_c (z'_c - m) and A.
template <typename acc_t>
struct ExpSums {
  acc_t sum;
  acc_t linear;
  acc_t coef;
};

// Sweep 2: e_c = exp(z'_c - m) summed (and stored over work when kStoreExp), with the linear terms.
template <typename T, typename acc_t, Linear kLinear, bool kStoreExp>
ExpSums<acc_t> exponentials(
    const LossConstants<acc_t>& k, acc_t* work, const T* p_row, acc_t m, acc_t* p_buffer) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t n = k.classes;
  const Vec m_v(m), keep(k.keep), smooth(k.smooth);
  Vec sum0(acc_t(0)), sum1(acc_t(0)), lin(acc_t(0)), coef(acc_t(0));
  for (int64_t b0 = 0; b0 < n; b0 += kTargetBlock) {
    const int64_t bn = std::min(kTargetBlock, n - b0);
    const acc_t* p = nullptr;
    if constexpr (kLinear == Linear::kProbability) p = probability_block(p_row, b0, bn, p_buffer);
    int64_t c = 0;
    for (; c + 2 * V <= bn; c += 2 * V) {
      acc_t* w0 = work + b0 + c;
      const Vec d0 = Vec::loadu(w0) - m_v, d1 = Vec::loadu(w0 + V) - m_v;
      const Vec e0 = exp_fast(d0), e1 = exp_fast(d1);
      sum0 = sum0 + e0;
      sum1 = sum1 + e1;
      if constexpr (kLinear == Linear::kClassWeight) {
        if (k.weight != nullptr) {
          lin = at::vec::fmadd(Vec::loadu(k.weight + b0 + c), d0, lin);
          lin = at::vec::fmadd(Vec::loadu(k.weight + b0 + c + V), d1, lin);
        } else {
          lin = lin + d0 + d1;
        }
      } else if constexpr (kLinear == Linear::kProbability) {
        Vec a0 = at::vec::fmadd(keep, Vec::loadu(p + c), smooth);
        Vec a1 = at::vec::fmadd(keep, Vec::loadu(p + c + V), smooth);
        if (k.weight != nullptr) {
          a0 = a0 * Vec::loadu(k.weight + b0 + c);
          a1 = a1 * Vec::loadu(k.weight + b0 + c + V);
        }
        lin = at::vec::fmadd(a0, d0, at::vec::fmadd(a1, d1, lin));
        coef = coef + a0 + a1;
      }
      if constexpr (kStoreExp) {
        e0.store(w0);
        e1.store(w0 + V);
      }
    }
    for (; c < bn; c += V) {
      const int64_t count = std::min<int64_t>(V, bn - c);
      acc_t* w0 = work + b0 + c;
      // Past count: d = 0 - m... masked below; exp of the zero-filled lanes is not added.
      const Vec d = Vec::set(Vec(acc_t(0)), load<Vec>(w0, count) - m_v, count);
      const Vec e = Vec::set(Vec(acc_t(0)), exp_fast(d), count);
      sum0 = sum0 + e;
      if constexpr (kLinear == Linear::kClassWeight) {
        lin = k.weight != nullptr ? at::vec::fmadd(load<Vec>(k.weight + b0 + c, count), d, lin) : lin + d;
      } else if constexpr (kLinear == Linear::kProbability) {
        Vec a = Vec::set(Vec(acc_t(0)), at::vec::fmadd(keep, load<Vec>(p + c, count), smooth), count);
        if (k.weight != nullptr) a = a * load<Vec>(k.weight + b0 + c, count);
        lin = at::vec::fmadd(a, d, lin);
        coef = coef + a;
      }
      if constexpr (kStoreExp) store(e, w0, count);
    }
  }
  return {lanes_sum(sum0 + sum1), lanes_sum(lin), lanes_sum(coef)};
}

// Per-row scale factors of the gradient, from ChunkGradient.
template <typename acc_t>
inline acc_t row_scale(const void* scale, bool per_row, int64_t r) {
  return static_cast<const acc_t*>(scale)[per_row ? r : 0];
}

// Sweep 3: the gradient over the row. e_c is in work (kStoredExp) or recomputed from z'_c = work_c.
//   g_c = (e_c p_coef - a_coef_c) softcap'_c,   p_coef = (k_ce A + k_z 2 lambda lse) / S,
//   a_coef_c = k_ce a_c (index: k_ce w_c eps / C, and target_term = k_ce (1 - eps) w_t softcap'_t at c = t)
// and for probability targets with grad_target: gt_c = k_ce (1 - eps) w_c (lse - z'_c).
template <typename T, typename acc_t, Linear kLinear, bool kStoredExp, bool kSoftcap>
void gradient(
    const LossConstants<acc_t>& k, acc_t* work, T* out_row, const T* p_row, T* grad_target_row, int64_t t,
    acc_t target_term, acc_t m, acc_t lse, acc_t p_coef, acc_t k_ce, acc_t* p_buffer, acc_t* convert_buffer) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t n = k.classes;
  const Vec m_v(m), lse_v(lse), p_coef_v(p_coef), k_ce_v(k_ce), keep(k.keep), smooth(k.smooth);
  const Vec smooth_ce(k_ce * k.smooth), target_scale(k_ce * k.keep);
  for (int64_t b0 = 0; b0 < n; b0 += kTargetBlock) {
    const int64_t bn = std::min(kTargetBlock, n - b0);
    const acc_t* p = nullptr;
    if constexpr (kLinear == Linear::kProbability) p = probability_block(p_row, b0, bn, p_buffer);
    // Where the block's gradient goes in acc_t: the row itself (acc_t rows), else a buffer converted after.
    acc_t* out = std::is_same_v<T, acc_t> ? work + b0 : convert_buffer;
    acc_t* target_out = grad_target_row != nullptr ? convert_buffer + kTargetBlock : nullptr;
    for (int64_t c = 0; c < bn; c += V) {
      const int64_t count = std::min<int64_t>(V, bn - c);
      const int64_t cc = b0 + c;
      const Vec stored = load<Vec>(work + cc, count);
      const Vec e = kStoredExp ? stored : exp_fast(stored - m_v);
      Vec a;  // k_ce a_c, the part that does not multiply the softmax
      if constexpr (kLinear == Linear::kProbability) {
        a = at::vec::fmadd(keep, load<Vec>(p + c, count), smooth);
        if (k.weight != nullptr) a = a * load<Vec>(k.weight + cc, count);
        a = a * k_ce_v;
      } else {
        a = k.weight != nullptr ? smooth_ce * load<Vec>(k.weight + cc, count) : smooth_ce;
      }
      Vec grad = at::vec::fmsub(e, p_coef_v, a);
      if constexpr (kSoftcap) grad = grad * softcap_derivative(stored, k);  // stored: z'_c
      store(grad, out + c, count);
      if (target_out != nullptr) {
        const Vec w = k.weight != nullptr ? load<Vec>(k.weight + cc, count) : Vec(acc_t(1));
        store(target_scale * w * (lse_v - stored), target_out + c, count);
      }
    }
    if (t >= b0 && t < b0 + bn) out[t - b0] -= target_term;
    if constexpr (!std::is_same_v<T, acc_t>) at::vec::convert(out, out_row + b0, bn);
    if (grad_target_row != nullptr) {
      if constexpr (std::is_same_v<T, acc_t>) {
        std::copy(target_out, target_out + bn, grad_target_row + b0);
      } else {
        at::vec::convert(target_out, grad_target_row + b0, bn);
      }
    }
  }
}

template <typename T, typename acc_t>
inline void fill_row(T* row, int64_t n, acc_t value) {
  std::fill(row, row + n, static_cast<T>(value));
}

// The class of row r's index target within the row's classes; -1 for probability targets and for a block of
// the classes that does not hold it (vocab-parallel).
inline int64_t local_target(const LogitsChunk& chunk, int64_t r) {
  if (chunk.target_index == nullptr) return -1;
  const int64_t t = chunk.target_index[r] - chunk.class_offset;
  return t >= 0 && t < chunk.classes ? t : -1;
}

// A row whose target is ignore_index: zero loss and gradient; partials m = 0, S = 1, the rest 0 (finite, so
// that their combination stays finite; the combination gives the token zero weight).
template <typename T, typename acc_t>
void ignored_row(int64_t C, T* row, const ChunkLosses& losses, const ChunkGradient& gradient_args, int64_t r) {
  if (losses.cross_entropy != nullptr) static_cast<acc_t*>(losses.cross_entropy)[r] = acc_t(0);
  if (losses.z_loss != nullptr) static_cast<acc_t*>(losses.z_loss)[r] = acc_t(0);
  if (losses.statistics != nullptr) {
    acc_t* out = static_cast<acc_t*>(losses.statistics) + r * kPartialStatistics;
    std::fill(out, out + kPartialStatistics, acc_t(0));
    out[kPartialSum] = acc_t(1);
  }
  if (gradient_args.wanted && losses.statistics == nullptr) std::fill(row, row + C, static_cast<T>(0));
}

// The partial-statistics mode, after sweep 1 (z'_c in work, m its max): sweep 2 and the PartialStatistic
// columns. A row of only -inf (a block whose classes are all masked) sums relative to 0: S_r = 0, and its
// A_r still counts.
template <typename T, typename acc_t, Linear kLinear>
void partial_statistics(
    const LossConstants<acc_t>& k, acc_t* work, const T* p_row, int64_t t, acc_t m, acc_t* out, acc_t* p_buffer) {
  if (std::isnan(m) || m == kInf<acc_t>) {
    std::fill(out, out + kPartialStatistics, kNaN<acc_t>);
    out[kPartialTargetWeight] = t >= 0 ? k.class_weight(t) : acc_t(0);
    return;
  }
  const bool empty = m == -kInf<acc_t>;
  const ExpSums<acc_t> sums = exponentials<T, acc_t, kLinear, false>(k, work, p_row, empty ? acc_t(0) : m, p_buffer);
  out[kPartialMax] = m;
  out[kPartialSum] = sums.sum;
  out[kPartialLinear] = empty ? acc_t(0) : sums.linear;
  out[kPartialCoefficient] = kLinear == Linear::kProbability ? sums.coef : k.total_weight;
  out[kPartialTargetLogit] = t >= 0 ? work[t] : acc_t(0);
  out[kPartialTargetWeight] = t >= 0 ? k.class_weight(t) : acc_t(0);
}

// The gradient-from-given-statistics mode, after sweep 1 (z'_c in work): sweep 3 with the global M, S, A, lse.
template <typename T, typename acc_t, Linear kLinear>
void gradient_from_statistics(
    const LossConstants<acc_t>& k, const ChunkGradient& gradient_args, acc_t* work, T* row, const T* p_row,
    T* grad_target_row, int64_t t, int64_t r, acc_t* p_buffer, acc_t* convert_buffer) {
  const acc_t* given = static_cast<const acc_t*>(gradient_args.statistics) + r * kGivenStatistics;
  const acc_t M = given[kGivenMax], log_s = given[kGivenLogSum], A = given[kGivenCoefficient];
  const acc_t lse = given[kGivenLse];
  if (!std::isfinite(M) || !std::isfinite(log_s)) {  // as the unsharded row: NaN
    fill_row(row, k.classes, kNaN<acc_t>);
    if (grad_target_row != nullptr) fill_row(grad_target_row, k.classes, kNaN<acc_t>);
    return;
  }
  const acc_t k_ce = row_scale<acc_t>(gradient_args.ce_scale, gradient_args.per_row, r);
  const acc_t k_z = row_scale<acc_t>(gradient_args.z_scale, gradient_args.per_row, r);
  const acc_t p_coef = softmax_factor(k, k_ce, A, k_z, lse, std::exp(-log_s));
  const bool softcap = k.softcap > 0;
  acc_t target_term = 0;
  if (t >= 0) {
    target_term = k_ce * k.keep * k.class_weight(t);
    if (softcap) target_term *= softcap_derivative(work[t], k);
  }
  if (softcap) {
    gradient<T, acc_t, kLinear, false, true>(
        k, work, row, p_row, grad_target_row, t, target_term, M, lse, p_coef, k_ce, p_buffer, convert_buffer);
  } else {
    gradient<T, acc_t, kLinear, false, false>(
        k, work, row, p_row, grad_target_row, t, target_term, M, lse, p_coef, k_ce, p_buffer, convert_buffer);
  }
}

// One row from start to end. `bias`: (classes,) in acc_t or nullptr. `scratch`: classes acc_t
// (reduced-precision rows only); p_buffer: kTargetBlock acc_t; convert_buffer: 2 * kTargetBlock acc_t.
template <typename T, Linear kLinear, typename acc_t = at::opmath_type<T>>
void process_row(
    const LogitsChunk& chunk, const LossConstants<acc_t>& k, const acc_t* bias, const ChunkLosses& losses,
    const ChunkGradient& gradient_args, int64_t r, acc_t* scratch, acc_t* p_buffer, acc_t* convert_buffer) {
  const int64_t C = k.classes;
  T* row = static_cast<T*>(chunk.logits) + r * chunk.row_stride;
  const T* p_row = kLinear == Linear::kProbability ? static_cast<const T*>(chunk.target_probability) + r * C : nullptr;
  T* grad_target_row =
      gradient_args.grad_target != nullptr ? static_cast<T*>(gradient_args.grad_target) + r * C : nullptr;
  const bool softcap = k.softcap > 0;
  if (kLinear != Linear::kProbability && chunk.target_index[r] == chunk.ignore_index) {
    ignored_row<T, acc_t>(C, row, losses, gradient_args, r);
    return;
  }

  // Sweep 1. `work` is the row in acc_t: the logits row itself for float/double, `scratch` otherwise.
  acc_t* work;
  if constexpr (std::is_same_v<T, acc_t>) {
    work = row;
  } else {
    at::vec::convert(row, scratch, C);
    work = scratch;
  }
  acc_t m;
  if (bias != nullptr && softcap) {
    m = transform_and_max<acc_t, true, true>(work, bias, work, C, k);
  } else if (bias != nullptr) {
    m = transform_and_max<acc_t, true, false>(work, bias, work, C, k);
  } else if (softcap) {
    m = transform_and_max<acc_t, false, true>(work, nullptr, work, C, k);
  } else {
    m = transform_and_max<acc_t, false, false>(work, nullptr, work, C, k);
  }

  acc_t* ce_out = static_cast<acc_t*>(losses.cross_entropy);
  acc_t* z_out = static_cast<acc_t*>(losses.z_loss);
  // The target's class within this row (-1: probability targets, or a block that does not hold it).
  const int64_t t = local_target(chunk, r);
  if (losses.statistics != nullptr) {
    partial_statistics<T, acc_t, kLinear>(k, work, p_row, t, m, static_cast<acc_t*>(losses.statistics) + r * kPartialStatistics, p_buffer);
    return;
  }
  if (gradient_args.statistics != nullptr) {
    gradient_from_statistics<T, acc_t, kLinear>(
        k, gradient_args, work, row, p_row, grad_target_row, t, r, p_buffer, convert_buffer);
    return;
  }
  if (!std::isfinite(m)) {  // NaN, +inf, or only -inf: torch's softmax and loss are NaN
    if (ce_out != nullptr) ce_out[r] = kNaN<acc_t>;
    if (z_out != nullptr) z_out[r] = kNaN<acc_t>;
    if (gradient_args.wanted) fill_row(row, C, kNaN<acc_t>);
    if (grad_target_row != nullptr) fill_row(grad_target_row, C, kNaN<acc_t>);
    return;
  }
  const acc_t z_target = t >= 0 ? work[t] : acc_t(0);

  // Sweep 2. e_c replaces z'_c unless the gradient sweep needs z'_c (softcap, target gradient).
  const bool store_exp = gradient_args.wanted && !softcap && grad_target_row == nullptr;
  const ExpSums<acc_t> sums = store_exp
      ? exponentials<T, acc_t, kLinear, true>(k, work, p_row, m, p_buffer)
      : exponentials<T, acc_t, kLinear, false>(k, work, p_row, m, p_buffer);
  const acc_t log_s = std::log(sums.sum);
  const acc_t lse = m + log_s;

  const acc_t w_t = t >= 0 ? k.class_weight(t) : acc_t(0);
  const acc_t coef_sum = kLinear == Linear::kProbability ? sums.coef : index_coef_sum(k, w_t);
  if (ce_out != nullptr) ce_out[r] = position_cross_entropy<kLinear>(k, m, log_s, sums.linear, coef_sum, w_t, z_target);
  if (z_out != nullptr) z_out[r] = z_loss(k, lse);
  if (!gradient_args.wanted) return;

  // Sweep 3.
  const acc_t k_ce = row_scale<acc_t>(gradient_args.ce_scale, gradient_args.per_row, r);
  const acc_t k_z = row_scale<acc_t>(gradient_args.z_scale, gradient_args.per_row, r);
  const acc_t p_coef = softmax_factor(k, k_ce, coef_sum, k_z, lse, acc_t(1) / sums.sum);
  acc_t target_term = 0;
  if (t >= 0) {
    target_term = k_ce * k.keep * w_t;
    if (softcap) target_term *= softcap_derivative(z_target, k);
  }
  auto run = [&](auto stored_exp, auto softcapped) {
    gradient<T, acc_t, kLinear, decltype(stored_exp)::value, decltype(softcapped)::value>(
        k, work, row, p_row, grad_target_row, t, target_term, m, lse, p_coef, k_ce, p_buffer, convert_buffer);
  };
  if (store_exp) {
    run(std::true_type(), std::false_type());
  } else if (softcap) {
    run(std::false_type(), std::true_type());
  } else {
    run(std::false_type(), std::false_type());
  }
}

template <typename T>
void rows_typed(const LogitsChunk& chunk, const ChunkLosses& losses, const ChunkGradient& gradient_args) {
  using acc_t = at::opmath_type<T>;
  const LossConstants<acc_t> k = row_constants<acc_t>(chunk);
  // The bias in acc_t, once per chunk.
  std::vector<acc_t> bias_buffer;
  const acc_t* bias = nullptr;
  if (chunk.bias != nullptr) {
    if constexpr (std::is_same_v<T, acc_t>) {
      bias = static_cast<const acc_t*>(chunk.bias);
    } else {
      bias_buffer.resize(chunk.classes);
      at::vec::convert(static_cast<const T*>(chunk.bias), bias_buffer.data(), chunk.classes);
      bias = bias_buffer.data();
    }
  }
  auto run = [&](auto linear) {
    constexpr Linear kLinear = decltype(linear)::value;
    at::parallel_for(0, chunk.rows, row_grain(chunk.classes), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(is_reduced_v<T> ? chunk.classes : 0);
      std::vector<acc_t> p_buffer(kTargetBlock), convert_buffer(2 * kTargetBlock);
      for (int64_t r = begin; r < end; ++r) {
        process_row<T, kLinear>(
            chunk, k, bias, losses, gradient_args, r, scratch.data(), p_buffer.data(), convert_buffer.data());
      }
    });
  };
  if (chunk.target_probability != nullptr) {
    run(std::integral_constant<Linear, Linear::kProbability>());
  } else if (chunk.label_smoothing > 0) {
    run(std::integral_constant<Linear, Linear::kClassWeight>());
  } else {
    run(std::integral_constant<Linear, Linear::kNone>());
  }
}

void rows(const LogitsChunk& chunk, const ChunkLosses& losses, const ChunkGradient& gradient_args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, chunk.dtype, "linear_cross_entropy_rows", [&] {
    rows_typed<scalar_t>(chunk, losses, gradient_args);
  });
}

}  // namespace

extern const LinearCrossEntropyKernels linear_cross_entropy_kernels = {&rows};

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
