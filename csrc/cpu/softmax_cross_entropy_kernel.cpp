// SoftmaxCrossEntropy CPU loops, compiled once per SIMD level (see cpu/dispatch.h). The derivation they
// implement is written above the ops in csrc/softmax_cross_entropy.cpp, in the same letters:
//   x  logits of one position,  m = max_c x_c,  s = sum_c exp(x_c - m),  lse = m + log s,
//   a_c the coefficients of the linear term, A = sum_c a_c,  lin = sum_c a_c (x_c - m).
//
// Two layouts of the (outer, classes, inner) input:
//   rows     (inner == 1): a position is a contiguous row of C logits; one row at a time, in blocks of
//            kRowBlock elements read from memory once, each element exponentiated once (online
//            logsumexp: the running sum is rescaled when the max grows, see row_sums);
//   spatial  (inner > 1, class stride S): the SIMD lanes are consecutive positions of one outer index,
//            their running sums in registers while a loop sweeps the classes, so (N, C, H, W) is read
//            in place, untransposed (column_sums / backward_spatial).
#include "cpu/softmax_cross_entropy_kernel.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/fast_exp.h"
#include "cpu/vec_helpers.h"

namespace torch_manualbp::cpu::CPU_CAPABILITY {
namespace {

// Elements of a row processed per step of the online logsumexp (8 KiB of float: stays in L1).
constexpr int64_t kRowBlock = 2048;
constexpr int64_t kMaxLanes = 256;  // the most spatial_lanes() returns

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

template <typename T, typename acc_t = at::opmath_type<T>>
inline const acc_t* as_acc(const T* src, int64_t n, acc_t* buffer) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return src;
  } else {
    at::vec::convert(src, buffer, n);
    return buffer;
  }
}

template <typename T, typename acc_t>
inline void fill(T* dst, int64_t n, acc_t value) {
  std::fill(dst, dst + n, static_cast<T>(value));
}

inline int64_t class_index(const void* target, c10::ScalarType dtype, int64_t position) {
  return dtype == c10::kByte ? static_cast<int64_t>(static_cast<const uint8_t*>(target)[position])
                             : static_cast<const int64_t*>(target)[position];
}

inline void check_class_index(int64_t t, int64_t classes) {
  TORCH_CHECK_INDEX(t >= 0 && t < classes, "Target ", t, " is out of bounds.");
}

template <typename acc_t>
inline acc_t lanes_sum(const Vectorized<acc_t>& v) {
  std::array<acc_t, Vectorized<acc_t>::size()> lanes;
  v.store(lanes.data());
  acc_t total = 0;
  for (acc_t lane : lanes) total += lane;
  return total;
}

// `count` <= Vec::size() elements, zero past count.
template <typename Vec>
inline Vec load_lanes(const typename Vec::value_type* p, int64_t count) {
  return count == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, count);
}

// Max of n elements; NaN if any is NaN.
template <typename acc_t>
acc_t block_max(const acc_t* x, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec m0(-kInf<acc_t>), m1(-kInf<acc_t>);
  int64_t c = 0;
  for (; c + 2 * V <= n; c += 2 * V) {
    m0 = at::vec::maximum(m0, Vec::loadu(x + c));
    m1 = at::vec::maximum(m1, Vec::loadu(x + c + V));
  }
  for (; c + V <= n; c += V) m0 = at::vec::maximum(m0, Vec::loadu(x + c));
  if (c < n) m0 = at::vec::maximum(m0, Vec::set(Vec(-kInf<acc_t>), Vec::loadu(x + c, n - c), n - c));
  std::array<acc_t, V> lanes;
  at::vec::maximum(m0, m1).store(lanes.data());
  acc_t m = -kInf<acc_t>;
  for (acc_t lane : lanes) {
    if (std::isnan(lane)) return lane;
    m = std::max(m, lane);
  }
  return m;
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

// The linear coefficients a_c of `count` classes starting at c (zero past count).
template <typename acc_t, Linear kLinear, bool kWeighted>
inline Vectorized<acc_t> linear_coef(
    const LossConstants<acc_t>& k, const acc_t* p, const acc_t* w, int64_t count) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  if constexpr (kLinear == Linear::kClassWeight) {
    if constexpr (kWeighted) return count == V ? Vec::loadu(w) : Vec::loadu(w, count);
    return count == V ? Vec(acc_t(1)) : Vec::set(Vec(acc_t(0)), Vec(acc_t(1)), count);
  } else {
    const Vec pv = count == V ? Vec::loadu(p) : Vec::loadu(p, count);
    Vec q = at::vec::fmadd(Vec(k.keep), pv, Vec(k.smooth));
    if (count != V) q = Vec::set(Vec(acc_t(0)), q, count);
    if constexpr (kWeighted) q = q * (count == V ? Vec::loadu(w) : Vec::loadu(w, count));
    return q;
  }
}

// ---- forward, rows ----------------------------------------------------------------------------------
template <typename acc_t>
struct RowSums {
  acc_t max;       // m (NaN or +inf: the row's first such value found)
  acc_t log_sum;   // log s
  acc_t coef_sum;  // A
  acc_t linear;    // lin
  bool finite;     // m finite: the row holds no NaN, no +inf and not only -inf
};

// A block's exponentials may be taken relative to a reference below its max by at most this much:
// exp(64) * kRowBlock stays far from float's overflow.
constexpr double kMaxReferenceGap = 64.0;

template <typename acc_t>
struct BlockSums {
  acc_t max;   // NaN-propagating
  acc_t sum;   // sum_c exp(x_c - ref)
  acc_t lin;   // sum_c a_c (x_c - ref)
  acc_t coef;  // sum_c a_c
};

// One pass over a block (from memory): its max, and its exponentials and linear term relative to `ref`.
template <typename acc_t, Linear kLinear, bool kWeighted>
BlockSums<acc_t> block_sums(
    const LossConstants<acc_t>& k, const acc_t* x, const acc_t* p, const acc_t* w, int64_t n, acc_t ref) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Vec ref_v(ref), zero(acc_t(0));
  Vec max0(-kInf<acc_t>), max1(-kInf<acc_t>), sum0(zero), sum1(zero), lin_v(zero), coef_v(zero);
  auto linear_step = [&](const Vec& xv, int64_t c, int64_t count) {
    if constexpr (kLinear != Linear::kNone) {
      const Vec a = linear_coef<acc_t, kLinear, kWeighted>(k, p + c, kWeighted ? w + c : nullptr, count);
      lin_v = at::vec::fmadd(a, xv - ref_v, lin_v);
      coef_v = coef_v + a;
    }
  };
  int64_t c = 0;
  for (; c + 2 * V <= n; c += 2 * V) {
    const Vec x0 = Vec::loadu(x + c), x1 = Vec::loadu(x + c + V);
    max0 = at::vec::maximum(max0, x0);
    max1 = at::vec::maximum(max1, x1);
    sum0 = sum0 + exp_fast(x0 - ref_v);
    sum1 = sum1 + exp_fast(x1 - ref_v);
    linear_step(x0, c, V);
    linear_step(x1, c + V, V);
  }
  for (; c < n; c += V) {
    const int64_t count = std::min<int64_t>(V, n - c);
    Vec xv = load_lanes<Vec>(x + c, count);
    if (count < V) xv = Vec::set(Vec(-kInf<acc_t>), xv, count);  // exp(-inf) = 0, max unchanged
    max0 = at::vec::maximum(max0, xv);
    sum0 = sum0 + exp_fast(xv - ref_v);
    if (count < V) xv = Vec::set(zero, xv, count);  // a = 0 past count: keep lin finite
    linear_step(xv, c, count);
  }
  std::array<acc_t, V> lanes;
  at::vec::maximum(max0, max1).store(lanes.data());
  acc_t block_max = -kInf<acc_t>;
  for (acc_t lane : lanes) block_max = std::isnan(lane) || std::isnan(block_max) ? kNaN<acc_t> : std::max(block_max, lane);
  BlockSums<acc_t> sums{block_max, lanes_sum(sum0 + sum1), 0, 0};
  if constexpr (kLinear != Linear::kNone) {
    sums.lin = lanes_sum(lin_v);
    sums.coef = lanes_sum(coef_v);
  }
  return sums;
}

// m, s, A and lin of one row in a single pass over memory (online logsumexp). The exponentials of a
// block are taken relative to the running max `ref` of the blocks before it (for the first block: its
// first element); when the block's max is larger, s is rescaled by exp(ref - max) and lin shifted by
// A (ref - max), so that at the end ref = m. Only a block whose max exceeds ref by more than
// kMaxReferenceGap (its exponentials could overflow) is exponentiated a second time.
template <typename T, Linear kLinear, bool kWeighted, typename acc_t = at::opmath_type<T>>
RowSums<acc_t> row_sums(
    const T* x_row, const T* p_row, const LossConstants<acc_t>& k, acc_t* x_buffer, acc_t* p_buffer) {
  acc_t ref = -kInf<acc_t>, s = 0, lin = 0, coef_sum = 0;
  for (int64_t c0 = 0; c0 < k.classes; c0 += kRowBlock) {
    const int64_t n = std::min(kRowBlock, k.classes - c0);
    const acc_t* x = as_acc(x_row + c0, n, x_buffer);
    const acc_t* p = nullptr;
    if constexpr (kLinear == Linear::kTargetProbability) p = as_acc(p_row + c0, n, p_buffer);
    const acc_t* w = kWeighted ? k.weight + c0 : nullptr;
    // Until a finite value is seen, lin is kept relative to 0 (only -inf so far: it is -inf or NaN).
    acc_t block_ref = ref;
    if (ref == -kInf<acc_t>) {
      block_ref = std::isfinite(x[0]) ? x[0] : block_max(x, n);
      if (std::isnan(block_ref) || block_ref == kInf<acc_t>) return {block_ref, 0, 0, 0, false};
      if (block_ref == -kInf<acc_t>) block_ref = 0;
    }
    const BlockSums<acc_t> block = block_sums<acc_t, kLinear, kWeighted>(k, x, p, w, n, block_ref);
    if (std::isnan(block.max) || block.max == kInf<acc_t>) return {block.max, 0, 0, 0, false};
    if (block.max == -kInf<acc_t>) {  // only -inf: no exponential counts
      lin += block.lin;
      coef_sum += block.coef;
      continue;
    }
    // lin moves from its old reference (ref, or 0) to block_ref: sum a (x - r') = sum a (x - r) + A (r - r').
    lin += block.lin + coef_sum * ((ref == -kInf<acc_t> ? acc_t(0) : ref) - block_ref);
    coef_sum += block.coef;
    const acc_t new_ref = std::max(block_ref, block.max);
    const acc_t old_sum = ref == -kInf<acc_t> ? acc_t(0) : s * std::exp(ref - new_ref);
    acc_t block_sum = block.sum;
    if (block.max - block_ref > acc_t(kMaxReferenceGap)) {
      block_sum = block_sums<acc_t, Linear::kNone, false>(k, x, nullptr, nullptr, n, new_ref).sum;
    } else if (new_ref != block_ref) {
      block_sum *= std::exp(block_ref - new_ref);
    }
    s = old_sum + block_sum;
    lin += coef_sum * (block_ref - new_ref);
    ref = new_ref;
  }
  const bool finite = ref > -kInf<acc_t>;
  return {ref, finite ? std::log(s) : -kInf<acc_t>, coef_sum, lin, finite};
}

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

template <typename T, Linear kLinear, bool kWeighted>
void forward_rows(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  using acc_t = at::opmath_type<T>;
  const LossConstants<acc_t> k(problem);
  const int64_t rows = problem.outer;
  const int64_t C = problem.classes;
  const T* input = static_cast<const T*>(problem.input);
  const T* prob = problem.probability_target ? static_cast<const T*>(problem.target) : nullptr;
  auto* max_logit = static_cast<acc_t*>(out.max_logit);
  auto* log_sum = static_cast<acc_t*>(out.log_sum);
  auto* block_sums = static_cast<acc_t*>(out.block_sums);
  const int64_t blocks = loss_blocks(rows, C, 1);
  const int64_t grain = std::max<int64_t>(1, row_grain(C) / kRowsPerLossBlock);
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    std::array<acc_t, is_reduced_v<T> ? kRowBlock : 1> x_buffer, p_buffer;
    for (int64_t b = begin; b < end; ++b) {
      acc_t loss_sum = 0, weight_sum = 0;
      const int64_t row_end = std::min(rows, (b + 1) * kRowsPerLossBlock);
      for (int64_t r = b * kRowsPerLossBlock; r < row_end; ++r) {
        const T* x_row = input + r * C;
        const RowSums<acc_t> sums = row_sums<T, kLinear, kWeighted>(
            x_row, prob != nullptr ? prob + r * C : nullptr, k, x_buffer.data(), p_buffer.data());
        max_logit[r] = sums.max;
        log_sum[r] = sums.finite ? sums.log_sum : sums.max;
        const PositionLoss<acc_t> loss = position_loss<acc_t, kLinear>(
            problem, k, r, sums.finite, sums.max, sums.log_sum, sums.coef_sum, sums.linear,
            [&](int64_t t) { return static_cast<acc_t>(x_row[t]); });
        if (out.per_position) {
          static_cast<T*>(out.loss)[r] = static_cast<T>(loss.loss);
        } else {
          loss_sum += loss.loss;
          weight_sum += loss.weight;
        }
      }
      if (!out.per_position) {
        block_sums[2 * b] = loss_sum;
        block_sums[2 * b + 1] = weight_sum;
      }
    }
  });
  finish_forward<T>(problem, out, blocks);
}

// ---- spatial layout helpers -------------------------------------------------------------------------
// One chunk: outer index n, positions s0 .. s0 + len of the inner dim.
struct Chunk {
  int64_t n, s0, len;
};

inline Chunk chunk_of(int64_t block, int64_t inner, int64_t lanes) {
  const int64_t per_outer = (inner + lanes - 1) / lanes;
  const int64_t s0 = (block % per_outer) * lanes;
  return {block / per_outer, s0, std::min(lanes, inner - s0)};
}

// The chunk's classes x len values of an (outer, classes, inner) tensor in acc_t, `stride` apart from one
// class to the next: in place for float/double (stride inner), converted into `buffer` otherwise
// (stride lanes).
template <typename T, typename acc_t = at::opmath_type<T>>
inline const acc_t* chunk_as_acc(
    const T* base, const Chunk& chunk, int64_t classes, int64_t inner, int64_t lanes, acc_t* buffer,
    int64_t& stride) {
  const T* src = base + chunk.n * classes * inner + chunk.s0;
  if constexpr (std::is_same_v<T, acc_t>) {
    stride = inner;
    return src;
  } else {
    stride = lanes;
    for (int64_t c = 0; c < classes; ++c) at::vec::convert(src + c * inner, buffer + c * lanes, chunk.len);
    return buffer;
  }
}

// Per SIMD lane (one spatial position each), over the classes of a column with class stride `stride`:
// the max and, relative to `ref`, the exponentials and the linear term.
template <typename acc_t>
struct ColumnSums {
  Vectorized<acc_t> max, sum, lin, coef;
};

template <typename acc_t, Linear kLinear, bool kWeighted>
ColumnSums<acc_t> column_sweep(
    const LossConstants<acc_t>& k, const acc_t* x, int64_t x_stride, const acc_t* p, int64_t p_stride, int64_t count,
    const Vectorized<acc_t>& ref) {
  using Vec = Vectorized<acc_t>;
  ColumnSums<acc_t> sums{Vec(-kInf<acc_t>), Vec(acc_t(0)), Vec(acc_t(0)), Vec(acc_t(0))};
  for (int64_t c = 0; c < k.classes; ++c) {
    const Vec xv = load_lanes<Vec>(x + c * x_stride, count);
    sums.max = at::vec::maximum(sums.max, xv);
    sums.sum = sums.sum + exp_fast(xv - ref);
    if constexpr (kLinear != Linear::kNone) {
      Vec a;
      if constexpr (kLinear == Linear::kClassWeight) {
        a = Vec(k.class_weight(c));
      } else {
        a = at::vec::fmadd(Vec(k.keep), load_lanes<Vec>(p + c * p_stride, count), Vec(k.smooth));
        if constexpr (kWeighted) a = a * Vec(k.weight[c]);
      }
      sums.lin = at::vec::fmadd(a, xv - ref, sums.lin);
      sums.coef = sums.coef + a;
    }
  }
  return sums;
}

// One vector of positions in a single sweep over the classes: the exponentials are taken relative to
// class 0's logit and rescaled by exp(ref - m) at the end (lin shifted by A (ref - m)); where that
// reference was not finite or lies more than kMaxReferenceGap below the max, the column is swept again
// relative to its max. Lanes whose max is not finite come back with meaningless sums (the caller
// writes NaN there).
template <typename acc_t, Linear kLinear, bool kWeighted>
ColumnSums<acc_t> column_sums(
    const LossConstants<acc_t>& k, const acc_t* x, int64_t x_stride, const acc_t* p, int64_t p_stride,
    int64_t count) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Vec ref = load_lanes<Vec>(x, count);
  ColumnSums<acc_t> sums = column_sweep<acc_t, kLinear, kWeighted>(k, x, x_stride, p, p_stride, count, ref);
  std::array<acc_t, V> ref_lanes, max_lanes;
  ref.store(ref_lanes.data());
  sums.max.store(max_lanes.data());
  bool sweep_again = false;
  for (int64_t l = 0; l < count; ++l) {
    sweep_again |= std::isfinite(max_lanes[l]) &&
        !(std::isfinite(ref_lanes[l]) && max_lanes[l] - ref_lanes[l] <= acc_t(kMaxReferenceGap));
  }
  if (sweep_again) {
    for (int64_t l = 0; l < V; ++l) max_lanes[l] = std::isfinite(max_lanes[l]) ? max_lanes[l] : acc_t(0);
    const Vec max = sums.max;
    sums = column_sweep<acc_t, kLinear, kWeighted>(k, x, x_stride, p, p_stride, count, Vec::loadu(max_lanes.data()));
    sums.max = max;
    return sums;
  }
  const Vec shift = ref - sums.max;  // <= 0 where the max is finite
  sums.sum = sums.sum * exp_fast(shift);
  if constexpr (kLinear != Linear::kNone) sums.lin = at::vec::fmadd(sums.coef, shift, sums.lin);
  return sums;
}

template <typename T, Linear kLinear, bool kWeighted>
void forward_spatial(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  using acc_t = at::opmath_type<T>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const LossConstants<acc_t> k(problem);
  const int64_t C = problem.classes, S = problem.inner;
  const int64_t lanes = spatial_lanes(C);
  const int64_t blocks = loss_blocks(problem.outer, C, S);
  const T* input = static_cast<const T*>(problem.input);
  const T* prob = problem.probability_target ? static_cast<const T*>(problem.target) : nullptr;
  auto* max_logit = static_cast<acc_t*>(out.max_logit);
  auto* log_sum_out = static_cast<acc_t*>(out.log_sum);
  auto* block_sums = static_cast<acc_t*>(out.block_sums);
  const int64_t grain = std::max<int64_t>(1, kParallelGrainElements / std::max<int64_t>(C * lanes, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x_buffer(is_reduced_v<T> ? C * lanes : 0);
    std::vector<acc_t> p_buffer(is_reduced_v<T> && prob != nullptr ? C * lanes : 0);
    alignas(64) std::array<acc_t, kMaxLanes> m, log_s, lin, coef_sum;
    for (int64_t b = begin; b < end; ++b) {
      const Chunk chunk = chunk_of(b, S, lanes);
      int64_t x_stride = 0, p_stride = 0;
      const acc_t* x = chunk_as_acc(input, chunk, C, S, lanes, x_buffer.data(), x_stride);
      const acc_t* p = prob != nullptr ? chunk_as_acc(prob, chunk, C, S, lanes, p_buffer.data(), p_stride) : nullptr;
      for (int64_t j = 0; j < chunk.len; j += V) {
        const ColumnSums<acc_t> column = column_sums<acc_t, kLinear, kWeighted>(
            k, x + j, x_stride, p != nullptr ? p + j : nullptr, p_stride, std::min<int64_t>(V, chunk.len - j));
        column.max.store(m.data() + j);
        column.sum.log().store(log_s.data() + j);
        column.lin.store(lin.data() + j);
        column.coef.store(coef_sum.data() + j);
      }
      acc_t loss_sum = 0, weight_sum = 0;
      for (int64_t l = 0; l < chunk.len; ++l) {
        const int64_t position = chunk.n * S + chunk.s0 + l;
        const bool finite = std::isfinite(m[l]);
        const acc_t log_sum = finite ? log_s[l] : -kInf<acc_t>;
        max_logit[position] = m[l];
        log_sum_out[position] = finite ? log_sum : m[l];
        const PositionLoss<acc_t> loss = position_loss<acc_t, kLinear>(
            problem, k, position, finite, m[l], log_sum, coef_sum[l], lin[l],
            [&](int64_t t) { return x[t * x_stride + l]; });
        if (out.per_position) {
          static_cast<T*>(out.loss)[position] = static_cast<T>(loss.loss);
        } else {
          loss_sum += loss.loss;
          weight_sum += loss.weight;
        }
      }
      if (!out.per_position) {
        block_sums[2 * b] = loss_sum;
        block_sums[2 * b + 1] = weight_sum;
      }
    }
  });
  finish_forward<T>(problem, out, blocks);
}

template <typename T, bool kWeighted>
void forward_typed(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  auto run = [&](auto linear) {
    constexpr Linear kLinear = decltype(linear)::value;
    if (problem.inner == 1) {
      forward_rows<T, kLinear, kWeighted>(problem, out);
    } else {
      forward_spatial<T, kLinear, kWeighted>(problem, out);
    }
  };
  if (problem.probability_target) {
    run(std::integral_constant<Linear, Linear::kTargetProbability>());
  } else if (problem.label_smoothing > 0) {
    run(std::integral_constant<Linear, Linear::kClassWeight>());
  } else {
    run(std::integral_constant<Linear, Linear::kNone>());
  }
}

void forward(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, problem.dtype, "softmax_cross_entropy_forward", [&] {
    if (problem.weight != nullptr) {
      forward_typed<scalar_t, true>(problem, out);
    } else {
      forward_typed<scalar_t, false>(problem, out);
    }
  });
}

// ---- backward ---------------------------------------------------------------------------------------
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

// Index targets, n classes of one row: grad_c = exp(x_c - m) gA_s - gb w_c with gA_s = gA / s (the
// [c == t] term is added by the caller).
template <typename acc_t, bool kWeighted>
void index_grad_block(const acc_t* x, const acc_t* w, int64_t n, acc_t m, acc_t gA_s, acc_t gb, acc_t* out) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Vec m_v(m), gA_v(gA_s), gb_v(gb);
  for (int64_t c = 0; c < n; c += V) {
    const int64_t count = std::min<int64_t>(V, n - c);
    const Vec e = exp_fast(load_lanes<Vec>(x + c, count) - m_v);
    const Vec b = kWeighted ? gb_v * load_lanes<Vec>(w + c, count) : gb_v;
    const Vec grad = at::vec::fmsub(e, gA_v, b);
    if (count == V) {
      grad.store(out + c);
    } else {
      grad.store(out + c, count);
    }
  }
}

// Probability targets, n classes of one row: grad_c = exp(x_c - m) gA_s - g a_c with gA_s = gA / s, and
// when grad_target is asked, grad_target_c = g (1 - eps) w_c ((m - x_c) + log s).
template <typename acc_t, bool kWeighted>
void probability_grad_block(
    const LossConstants<acc_t>& k, const acc_t* x, const acc_t* p, const acc_t* w, int64_t n, acc_t m, acc_t log_s,
    acc_t gA_s, acc_t g, acc_t* out, acc_t* out_target) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const Vec m_v(m), log_s_v(log_s), gA_v(gA_s), g_v(g), g_keep_v(g * k.keep);
  for (int64_t c = 0; c < n; c += V) {
    const int64_t count = std::min<int64_t>(V, n - c);
    const Vec xv = load_lanes<Vec>(x + c, count);
    const Vec a = linear_coef<acc_t, Linear::kTargetProbability, kWeighted>(k, p + c, kWeighted ? w + c : nullptr, count);
    const Vec grad = at::vec::fmsub(exp_fast(xv - m_v), gA_v, g_v * a);
    grad.store(out + c, count);
    if (out_target != nullptr) {
      const Vec scale = kWeighted ? g_keep_v * load_lanes<Vec>(w + c, count) : g_keep_v;
      (scale * ((m_v - xv) + log_s_v)).store(out_target + c, count);
    }
  }
}

// A = sum_c a_c of one probability row, in block order.
template <typename T, bool kWeighted, typename acc_t = at::opmath_type<T>>
acc_t probability_coef_sum(const LossConstants<acc_t>& k, const T* p_row, acc_t* p_buffer) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  acc_t total = 0;
  for (int64_t c0 = 0; c0 < k.classes; c0 += kRowBlock) {
    const int64_t n = std::min(kRowBlock, k.classes - c0);
    const acc_t* p = as_acc(p_row + c0, n, p_buffer);
    Vec sum_v(acc_t(0));
    for (int64_t c = 0; c < n; c += V) {
      sum_v = sum_v + linear_coef<acc_t, Linear::kTargetProbability, kWeighted>(
                          k, p + c, kWeighted ? k.weight + c0 + c : nullptr, std::min<int64_t>(V, n - c));
    }
    total += lanes_sum(sum_v);
  }
  return total;
}

template <typename T, bool kProbability, bool kWeighted>
void backward_rows(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args) {
  using acc_t = at::opmath_type<T>;
  const LossConstants<acc_t> k(problem);
  const int64_t C = problem.classes;
  const T* input = static_cast<const T*>(problem.input);
  const T* prob = kProbability ? static_cast<const T*>(problem.target) : nullptr;
  const auto* max_logit = static_cast<const acc_t*>(args.max_logit);
  const auto* log_sum = static_cast<const acc_t*>(args.log_sum);
  T* grad = static_cast<T*>(args.grad_input);
  T* grad_target = static_cast<T*>(args.grad_target);
  at::parallel_for(0, problem.outer, row_grain(C), [&](int64_t begin, int64_t end) {
    constexpr int64_t kBuffer = is_reduced_v<T> ? kRowBlock : 1;
    std::array<acc_t, kBuffer> x_buffer, p_buffer, grad_buffer, grad_target_buffer;
    for (int64_t r = begin; r < end; ++r) {
      const T* x_row = input + r * C;
      T* grad_row = grad + r * C;
      T* grad_target_row = grad_target != nullptr ? grad_target + r * C : nullptr;
      const acc_t m = max_logit[r], log_s = log_sum[r];
      if (!std::isfinite(m)) {  // NaN, +inf or only -inf in the row: torch's softmax is NaN
        fill(grad_row, C, kNaN<acc_t>);
        if (grad_target_row != nullptr) fill(grad_target_row, C, kNaN<acc_t>);
        continue;
      }
      const acc_t g = position_scale<T>(args, r);
      const acc_t inv_s = acc_t(1) / std::exp(log_s);
      if constexpr (!kProbability) {
        const int64_t t = class_index(problem.target, problem.index_dtype, r);
        if (t == problem.ignore_index) {
          fill(grad_row, C, acc_t(0));
          continue;
        }
        check_class_index(t, C);
        const acc_t w_t = k.class_weight(t);
        const acc_t gA = g * (k.keep * w_t + k.smooth * k.total_weight);
        for (int64_t c0 = 0; c0 < C; c0 += kRowBlock) {
          const int64_t n = std::min(kRowBlock, C - c0);
          acc_t* out = acc_destination(grad_row + c0, grad_buffer.data());
          index_grad_block<acc_t, kWeighted>(
              as_acc(x_row + c0, n, x_buffer.data()), kWeighted ? k.weight + c0 : nullptr, n, m, gA * inv_s,
              g * k.smooth, out);
          if (t >= c0 && t < c0 + n) out[t - c0] -= g * k.keep * w_t;
          store_from_acc(out, grad_row + c0, n);
        }
      } else {
        const T* p_row = prob + r * C;
        const acc_t gA = g * probability_coef_sum<T, kWeighted>(k, p_row, p_buffer.data());
        for (int64_t c0 = 0; c0 < C; c0 += kRowBlock) {
          const int64_t n = std::min(kRowBlock, C - c0);
          acc_t* out = acc_destination(grad_row + c0, grad_buffer.data());
          acc_t* out_target = grad_target_row != nullptr
              ? acc_destination(grad_target_row + c0, grad_target_buffer.data())
              : nullptr;
          probability_grad_block<acc_t, kWeighted>(
              k, as_acc(x_row + c0, n, x_buffer.data()), as_acc(p_row + c0, n, p_buffer.data()),
              kWeighted ? k.weight + c0 : nullptr, n, m, log_s, gA * inv_s, g, out, out_target);
          store_from_acc(out, grad_row + c0, n);
          if (out_target != nullptr) store_from_acc(out_target, grad_target_row + c0, n);
        }
      }
    }
  });
}

template <typename T, bool kProbability, bool kWeighted>
void backward_spatial(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args) {
  using acc_t = at::opmath_type<T>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const LossConstants<acc_t> k(problem);
  const int64_t C = problem.classes, S = problem.inner;
  const int64_t lanes = spatial_lanes(C);
  const int64_t blocks = loss_blocks(problem.outer, C, S);
  const T* input = static_cast<const T*>(problem.input);
  const T* prob = kProbability ? static_cast<const T*>(problem.target) : nullptr;
  const auto* max_logit = static_cast<const acc_t*>(args.max_logit);
  const auto* log_sum = static_cast<const acc_t*>(args.log_sum);
  T* grad = static_cast<T*>(args.grad_input);
  T* grad_target = static_cast<T*>(args.grad_target);
  const int64_t grain = std::max<int64_t>(1, kParallelGrainElements / std::max<int64_t>(C * lanes, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    const int64_t buffer_size = is_reduced_v<T> ? C * lanes : 0;
    std::vector<acc_t> x_buffer(buffer_size), grad_buffer(buffer_size);
    std::vector<acc_t> p_buffer(kProbability ? buffer_size : 0);
    std::vector<acc_t> grad_target_buffer(grad_target != nullptr ? buffer_size : 0);
    // Per lane: m and log s (0 where not finite), 1 / s, gA (index: already divided by s), gb (index:
    // g eps / C; probability: g), the target term subtracted at class t (index), and which lanes are NaN
    // columns.
    alignas(64) std::array<acc_t, kMaxLanes> m, log_s, inv_s, gA, gb, target_term;
    std::array<int64_t, kMaxLanes> target;
    std::array<bool, kMaxLanes> nan_lane;
    for (int64_t b = begin; b < end; ++b) {
      const Chunk chunk = chunk_of(b, S, lanes);
      const int64_t offset = chunk.n * C * S + chunk.s0;
      int64_t x_stride = 0, p_stride = 0;
      const acc_t* x = chunk_as_acc(input, chunk, C, S, lanes, x_buffer.data(), x_stride);
      const acc_t* p = kProbability ? chunk_as_acc(prob, chunk, C, S, lanes, p_buffer.data(), p_stride) : nullptr;
      const int64_t out_stride = is_reduced_v<T> ? lanes : S;
      acc_t* out = acc_destination(grad + offset, grad_buffer.data());
      acc_t* out_target =
          grad_target != nullptr ? acc_destination(grad_target + offset, grad_target_buffer.data()) : nullptr;
      const int64_t padded = (chunk.len + V - 1) / V * V;
      for (int64_t l = 0; l < padded; ++l) {
        m[l] = log_s[l] = inv_s[l] = gA[l] = gb[l] = target_term[l] = acc_t(0);
        target[l] = -1;
        nan_lane[l] = false;
        if (l >= chunk.len) continue;
        const int64_t position = chunk.n * S + chunk.s0 + l;
        if (!std::isfinite(max_logit[position])) {
          nan_lane[l] = true;
          continue;
        }
        m[l] = max_logit[position];
        log_s[l] = log_sum[position];
        inv_s[l] = acc_t(1) / std::exp(log_s[l]);
        const acc_t g = position_scale<T>(args, position);
        if constexpr (kProbability) {
          gb[l] = g;
        } else {
          const int64_t t = class_index(problem.target, problem.index_dtype, position);
          if (t == problem.ignore_index) continue;
          check_class_index(t, C);
          const acc_t w_t = k.class_weight(t);
          gA[l] = g * (k.keep * w_t + k.smooth * k.total_weight) * inv_s[l];
          gb[l] = g * k.smooth;
          target[l] = t;
          target_term[l] = g * k.keep * w_t;
        }
      }
      // One vector of positions at a time, its per-lane factors in registers, sweeping the classes.
      for (int64_t j = 0; j < chunk.len; j += V) {
        const int64_t count = std::min<int64_t>(V, chunk.len - j);
        const Vec m_v = Vec::loadu(m.data() + j), log_s_v = Vec::loadu(log_s.data() + j);
        const Vec gb_v = Vec::loadu(gb.data() + j);
        Vec gA_v = Vec::loadu(gA.data() + j);  // divided by s: multiplies exp(x - m)
        auto coef = [&](int64_t c) {  // a_c of probability targets
          Vec a = at::vec::fmadd(Vec(k.keep), load_lanes<Vec>(p + c * p_stride + j, count), Vec(k.smooth));
          return kWeighted ? a * Vec(k.weight[c]) : a;
        };
        if constexpr (kProbability) {  // gA / s = g A / s, A = sum_c a_c
          Vec coef_sum(acc_t(0));
          for (int64_t c = 0; c < C; ++c) coef_sum = coef_sum + coef(c);
          gA_v = coef_sum * gb_v * Vec::loadu(inv_s.data() + j);
        }
        for (int64_t c = 0; c < C; ++c) {
          const Vec xv = load_lanes<Vec>(x + c * x_stride + j, count);
          const Vec e = exp_fast(xv - m_v);
          Vec b;
          if constexpr (kProbability) {
            b = gb_v * coef(c);
          } else {
            b = kWeighted ? gb_v * Vec(k.weight[c]) : gb_v;
          }
          at::vec::fmsub(e, gA_v, b).store(out + c * out_stride + j, count);
          if (out_target != nullptr) {
            (gb_v * Vec(k.keep * k.class_weight(c)) * ((m_v - xv) + log_s_v)).store(out_target + c * out_stride + j, count);
          }
        }
      }
      for (int64_t l = 0; l < chunk.len; ++l) {
        if (target[l] >= 0) out[target[l] * out_stride + l] -= target_term[l];
        if (nan_lane[l]) {
          for (int64_t c = 0; c < C; ++c) out[c * out_stride + l] = kNaN<acc_t>;
          if (out_target != nullptr) {
            for (int64_t c = 0; c < C; ++c) out_target[c * out_stride + l] = kNaN<acc_t>;
          }
        }
      }
      if constexpr (is_reduced_v<T>) {
        for (int64_t c = 0; c < C; ++c) {
          store_from_acc(out + c * lanes, grad + offset + c * S, chunk.len);
          if (out_target != nullptr) store_from_acc(out_target + c * lanes, grad_target + offset + c * S, chunk.len);
        }
      }
    }
  });
}

void backward(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, problem.dtype, "softmax_cross_entropy_backward", [&] {
    auto run = [&](auto probability, auto weighted) {
      constexpr bool kProbability = decltype(probability)::value;
      constexpr bool kWeighted = decltype(weighted)::value;
      if (problem.inner == 1) {
        backward_rows<scalar_t, kProbability, kWeighted>(problem, args);
      } else {
        backward_spatial<scalar_t, kProbability, kWeighted>(problem, args);
      }
    };
    auto with_weight = [&](auto probability) {
      if (problem.weight != nullptr) {
        run(probability, std::true_type());
      } else {
        run(probability, std::false_type());
      }
    };
    if (problem.probability_target) {
      with_weight(std::true_type());
    } else {
      with_weight(std::false_type());
    }
  });
}

}  // namespace

extern const SoftmaxCrossEntropyKernels softmax_cross_entropy_kernels = {&forward, &backward};

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
