// SoftmaxCrossEntropy CPU loops, rows layout (inner == 1): a position is a contiguous row of C logits;
// one row at a time, in blocks of kRowBlock elements read from memory once, each element exponentiated
// once (online logsumexp: the running sum is rescaled when the max grows, see row_sums). With a softcap a
// block's logits are first written softcapped into a buffer (logits_block) that the same loops read, and a
// block of the gradient is multiplied by the softcap's derivative once complete; without one, nothing of it
// runs. Compiled once per SIMD level (see cpu/dispatch.h); the letters are those of cpu/cross_entropy_math.h.
#include <array>

#include "cpu/cross_entropy_math.h"

namespace torch_manualbp::cpu::CPU_CAPABILITY {
namespace {

// Elements of a row processed per step of the online logsumexp (8 KiB of float: stays in L1).
constexpr int64_t kRowBlock = 2048;

template <typename T, typename acc_t = at::opmath_type<T>>
inline const acc_t* as_acc(const T* src, int64_t n, acc_t* buffer) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return src;
  } else {
    at::vec::convert(src, buffer, n);
    return buffer;
  }
}

// The block's logits as the loss sees them, in acc_t: with a softcap z' = s tanh(x / s) written into `buffer`,
// else as_acc (the row itself for float and double).
template <typename T, typename acc_t = at::opmath_type<T>>
inline const acc_t* logits_block(const T* src, int64_t n, acc_t* buffer, const LossConstants<acc_t>& k) {
  if (!k.softcapped()) return as_acc(src, n, buffer);
  softcap_into(src, n, buffer, k);
  return buffer;
}

template <typename T, typename acc_t>
inline void fill(T* dst, int64_t n, acc_t value) {
  std::fill(dst, dst + n, static_cast<T>(value));
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
    const acc_t* x = logits_block(x_row + c0, n, x_buffer, k);
    const acc_t* p = nullptr;
    if constexpr (kLinear == Linear::kProbability) p = as_acc(p_row + c0, n, p_buffer);
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

template <typename T, Linear kLinear, bool kWeighted>
void forward_rows_typed(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  using acc_t = at::opmath_type<T>;
  const LossConstants<acc_t> k = loss_constants<acc_t>(problem);
  const int64_t rows = problem.outer;
  const int64_t C = problem.classes;
  const T* input = static_cast<const T*>(problem.input);
  const T* prob = problem.probability_target ? static_cast<const T*>(problem.target) : nullptr;
  auto* max_logit = static_cast<acc_t*>(out.max_logit);
  auto* log_sum = static_cast<acc_t*>(out.log_sum);
  const int64_t blocks = loss_blocks(rows, C, 1);
  const int64_t grain = std::max<int64_t>(1, row_grain(C) / kRowsPerLossBlock);
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    std::array<acc_t, kRowBlock> x_buffer;  // reduced types and the softcap
    std::array<acc_t, is_reduced_v<T> ? kRowBlock : 1> p_buffer;
    for (int64_t b = begin; b < end; ++b) {
      BlockLoss<T> block_loss{out};
      const int64_t row_end = std::min(rows, (b + 1) * kRowsPerLossBlock);
      for (int64_t r = b * kRowsPerLossBlock; r < row_end; ++r) {
        const T* x_row = input + r * C;
        const RowSums<acc_t> sums = row_sums<T, kLinear, kWeighted>(
            x_row, prob != nullptr ? prob + r * C : nullptr, k, x_buffer.data(), p_buffer.data());
        max_logit[r] = sums.max;
        log_sum[r] = sums.finite ? sums.log_sum : sums.max;
        block_loss.add(r, position_loss<acc_t, kLinear>(
            problem, k, r, sums.finite, sums.max, sums.log_sum, sums.coef_sum, sums.linear,
            [&](int64_t t) {
              const acc_t x_t = static_cast<acc_t>(x_row[t]);
              return k.softcapped() ? softcapped(x_t, k) : x_t;
            }));
      }
      block_loss.store(b);
    }
  });
  finish_forward<T>(problem, out, blocks);
}

// ---- backward, rows (the gradient's math: cpu/cross_entropy_math.h) ----------------------------------

// Index targets, n classes of one row: grad_c = exp(x_c - m) gA_s - gb w_c with gA_s the softmax factor
// (g A + gz 2 lambda lse) / s (the [c == t] term and the softcap's factor are applied by the caller).
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

// Probability targets, n classes of one row: grad_c = exp(x_c - m) gA_s - g a_c with gA_s the softmax
// factor (g A + gz 2 lambda lse) / s (the softcap's factor is applied by the caller), and when grad_target is
// asked, grad_target_c = g (1 - eps) w_c ((m - x_c) + log s).
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
    const Vec a = linear_coef<acc_t, Linear::kProbability, kWeighted>(k, p + c, kWeighted ? w + c : nullptr, count);
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
      sum_v = sum_v + linear_coef<acc_t, Linear::kProbability, kWeighted>(
                          k, p + c, kWeighted ? k.weight + c0 + c : nullptr, std::min<int64_t>(V, n - c));
    }
    total += lanes_sum(sum_v);
  }
  return total;
}

template <typename T, bool kProbability, bool kWeighted>
void backward_rows_typed(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args) {
  using acc_t = at::opmath_type<T>;
  const LossConstants<acc_t> k = loss_constants<acc_t>(problem);
  const int64_t C = problem.classes;
  const T* input = static_cast<const T*>(problem.input);
  const T* prob = kProbability ? static_cast<const T*>(problem.target) : nullptr;
  const auto* max_logit = static_cast<const acc_t*>(args.max_logit);
  const auto* log_sum = static_cast<const acc_t*>(args.log_sum);
  T* grad = static_cast<T*>(args.grad_input);
  T* grad_target = static_cast<T*>(args.grad_target);
  at::parallel_for(0, problem.outer, row_grain(C), [&](int64_t begin, int64_t end) {
    constexpr int64_t kBuffer = is_reduced_v<T> ? kRowBlock : 1;
    std::array<acc_t, kRowBlock> x_buffer;  // reduced types and the softcap
    std::array<acc_t, kBuffer> p_buffer, grad_buffer, grad_target_buffer;
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
      const acc_t g_z = z_position_scale<T>(args, k, r);
      const acc_t inv_s = acc_t(1) / std::exp(log_s);
      if constexpr (!kProbability) {
        const int64_t t = class_index(problem.target, problem.index_dtype, r);
        if (t == problem.ignore_index) {
          fill(grad_row, C, acc_t(0));
          continue;
        }
        check_class_index(t, C);
        const acc_t w_t = k.class_weight(t);
        const acc_t factor = softmax_factor(k, g, index_coef_sum(k, w_t), g_z, m + log_s, inv_s);
        for (int64_t c0 = 0; c0 < C; c0 += kRowBlock) {
          const int64_t n = std::min(kRowBlock, C - c0);
          acc_t* out = acc_destination(grad_row + c0, grad_buffer.data());
          const acc_t* x = logits_block(x_row + c0, n, x_buffer.data(), k);
          index_grad_block<acc_t, kWeighted>(x, kWeighted ? k.weight + c0 : nullptr, n, m, factor, g * k.smooth, out);
          if (t >= c0 && t < c0 + n) out[t - c0] -= g * k.keep * w_t;
          if (k.softcapped()) scale_by_softcap_derivative(out, x, n, k);
          store_from_acc(out, grad_row + c0, n);
        }
      } else {
        const T* p_row = prob + r * C;
        const acc_t coef_sum = probability_coef_sum<T, kWeighted>(k, p_row, p_buffer.data());
        const acc_t factor = softmax_factor(k, g, coef_sum, g_z, m + log_s, inv_s);
        for (int64_t c0 = 0; c0 < C; c0 += kRowBlock) {
          const int64_t n = std::min(kRowBlock, C - c0);
          acc_t* out = acc_destination(grad_row + c0, grad_buffer.data());
          acc_t* out_target = grad_target_row != nullptr
              ? acc_destination(grad_target_row + c0, grad_target_buffer.data())
              : nullptr;
          const acc_t* x = logits_block(x_row + c0, n, x_buffer.data(), k);
          probability_grad_block<acc_t, kWeighted>(
              k, x, as_acc(p_row + c0, n, p_buffer.data()), kWeighted ? k.weight + c0 : nullptr, n, m, log_s, factor,
              g, out, out_target);
          if (k.softcapped()) scale_by_softcap_derivative(out, x, n, k);
          store_from_acc(out, grad_row + c0, n);
          if (out_target != nullptr) store_from_acc(out_target, grad_target_row + c0, n);
        }
      }
    }
  });
}

}  // namespace

void forward_rows(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  dispatch_forward(problem, [&](auto type, auto linear, auto weighted) {
    forward_rows_typed<typename decltype(type)::type, decltype(linear)::value, decltype(weighted)::value>(problem, out);
  });
}

void backward_rows(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args) {
  dispatch_backward(problem, [&](auto type, auto probability, auto weighted) {
    backward_rows_typed<typename decltype(type)::type, decltype(probability)::value, decltype(weighted)::value>(
        problem, args);
  });
}

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
