// SoftmaxCrossEntropy CPU loops, spatial layout (inner > 1, class stride S): the SIMD lanes are consecutive
// positions of one outer index, their running sums in registers while a loop sweeps the classes, so
// (N, C, H, W) is read in place, untransposed (column_sums / backward_spatial_typed). With a softcap a
// chunk's logits are first written softcapped into a buffer (chunk_logits) that the same loops read, and the
// chunk's gradient is multiplied by the softcap's derivative once complete. Compiled once per SIMD level
// (see cpu/dispatch.h); the letters are those of cpu/cross_entropy_math.h.
#include <array>
#include <vector>

#include "cpu/cross_entropy_math.h"

namespace torch_manualbp::cpu::CPU_CAPABILITY {
namespace {

constexpr int64_t kMaxLanes = 256;  // the most spatial_lanes() returns

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

// The chunk's logits as the loss sees them: with a softcap z' = s tanh(x / s) written into `buffer` (stride
// lanes), else chunk_as_acc.
template <typename T, typename acc_t = at::opmath_type<T>>
inline const acc_t* chunk_logits(
    const T* base, const Chunk& chunk, int64_t classes, int64_t inner, int64_t lanes, acc_t* buffer, int64_t& stride,
    const LossConstants<acc_t>& k) {
  if (!k.softcapped()) return chunk_as_acc(base, chunk, classes, inner, lanes, buffer, stride);
  const T* src = base + chunk.n * classes * inner + chunk.s0;
  for (int64_t c = 0; c < classes; ++c) softcap_into(src + c * inner, chunk.len, buffer + c * lanes, k);
  stride = lanes;
  return buffer;
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
void forward_spatial_typed(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  using acc_t = at::opmath_type<T>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const LossConstants<acc_t> k = loss_constants<acc_t>(problem);
  const int64_t C = problem.classes, S = problem.inner;
  const int64_t lanes = spatial_lanes(C);
  const int64_t blocks = loss_blocks(problem.outer, C, S);
  const T* input = static_cast<const T*>(problem.input);
  const T* prob = problem.probability_target ? static_cast<const T*>(problem.target) : nullptr;
  auto* max_logit = static_cast<acc_t*>(out.max_logit);
  auto* log_sum_out = static_cast<acc_t*>(out.log_sum);
  const int64_t grain = std::max<int64_t>(1, kParallelGrainElements / std::max<int64_t>(C * lanes, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x_buffer(is_reduced_v<T> || k.softcapped() ? C * lanes : 0);
    std::vector<acc_t> p_buffer(is_reduced_v<T> && prob != nullptr ? C * lanes : 0);
    alignas(64) std::array<acc_t, kMaxLanes> m, log_s, lin, coef_sum;
    for (int64_t b = begin; b < end; ++b) {
      const Chunk chunk = chunk_of(b, S, lanes);
      int64_t x_stride = 0, p_stride = 0;
      const acc_t* x = chunk_logits(input, chunk, C, S, lanes, x_buffer.data(), x_stride, k);
      const acc_t* p = prob != nullptr ? chunk_as_acc(prob, chunk, C, S, lanes, p_buffer.data(), p_stride) : nullptr;
      for (int64_t j = 0; j < chunk.len; j += V) {
        const ColumnSums<acc_t> column = column_sums<acc_t, kLinear, kWeighted>(
            k, x + j, x_stride, p != nullptr ? p + j : nullptr, p_stride, std::min<int64_t>(V, chunk.len - j));
        column.max.store(m.data() + j);
        column.sum.log().store(log_s.data() + j);
        column.lin.store(lin.data() + j);
        column.coef.store(coef_sum.data() + j);
      }
      BlockLoss<T> block_loss{out};
      for (int64_t l = 0; l < chunk.len; ++l) {
        const int64_t position = chunk.n * S + chunk.s0 + l;
        const bool finite = std::isfinite(m[l]);
        const acc_t log_sum = finite ? log_s[l] : -kInf<acc_t>;
        max_logit[position] = m[l];
        log_sum_out[position] = finite ? log_sum : m[l];
        block_loss.add(position, position_loss<acc_t, kLinear>(
            problem, k, position, finite, m[l], log_sum, coef_sum[l], lin[l],
            [&](int64_t t) { return x[t * x_stride + l]; }));
      }
      block_loss.store(b);
    }
  });
  finish_forward<T>(problem, out, blocks);
}

// ---- backward, spatial (the gradient's math: cpu/cross_entropy_math.h) -------------------------------

template <typename T, bool kProbability, bool kWeighted>
void backward_spatial_typed(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args) {
  using acc_t = at::opmath_type<T>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const LossConstants<acc_t> k = loss_constants<acc_t>(problem);
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
    std::vector<acc_t> x_buffer(is_reduced_v<T> || k.softcapped() ? C * lanes : 0), grad_buffer(buffer_size);
    std::vector<acc_t> p_buffer(kProbability ? buffer_size : 0);
    std::vector<acc_t> grad_target_buffer(grad_target != nullptr ? buffer_size : 0);
    // Per lane: m and log s (0 where not finite), 1 / s, gA (index: the softmax factor, already divided by s),
    // gb (index: g eps / C; probability: g), gz (probability: the z-loss's scale), the target term subtracted
    // at class t (index), and which lanes are NaN columns.
    alignas(64) std::array<acc_t, kMaxLanes> m, log_s, inv_s, gA, gb, gz, target_term;
    std::array<int64_t, kMaxLanes> target;
    std::array<bool, kMaxLanes> nan_lane;
    for (int64_t b = begin; b < end; ++b) {
      const Chunk chunk = chunk_of(b, S, lanes);
      const int64_t offset = chunk.n * C * S + chunk.s0;
      int64_t x_stride = 0, p_stride = 0;
      const acc_t* x = chunk_logits(input, chunk, C, S, lanes, x_buffer.data(), x_stride, k);
      const acc_t* p = kProbability ? chunk_as_acc(prob, chunk, C, S, lanes, p_buffer.data(), p_stride) : nullptr;
      const int64_t out_stride = is_reduced_v<T> ? lanes : S;
      acc_t* out = acc_destination(grad + offset, grad_buffer.data());
      acc_t* out_target =
          grad_target != nullptr ? acc_destination(grad_target + offset, grad_target_buffer.data()) : nullptr;
      const int64_t padded = (chunk.len + V - 1) / V * V;
      for (int64_t l = 0; l < padded; ++l) {
        m[l] = log_s[l] = inv_s[l] = gA[l] = gb[l] = gz[l] = target_term[l] = acc_t(0);
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
        const acc_t g_z = z_position_scale<T>(args, k, position);
        if constexpr (kProbability) {
          gb[l] = g;
          gz[l] = g_z;
        } else {
          const int64_t t = class_index(problem.target, problem.index_dtype, position);
          if (t == problem.ignore_index) continue;
          check_class_index(t, C);
          const acc_t w_t = k.class_weight(t);
          gA[l] = softmax_factor(k, g, index_coef_sum(k, w_t), g_z, m[l] + log_s[l], inv_s[l]);
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
        if constexpr (kProbability) {  // (g A + gz 2 lambda lse) / s, A = sum_c a_c
          Vec coef_sum(acc_t(0));
          for (int64_t c = 0; c < C; ++c) coef_sum = coef_sum + coef(c);
          gA_v = softmax_factor(k, gb_v, coef_sum, Vec::loadu(gz.data() + j), m_v + log_s_v, Vec::loadu(inv_s.data() + j));
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
      if (k.softcapped()) {
        for (int64_t c = 0; c < C; ++c) scale_by_softcap_derivative(out + c * out_stride, x + c * x_stride, chunk.len, k);
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

}  // namespace

void forward_spatial(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  dispatch_forward(problem, [&](auto type, auto linear, auto weighted) {
    forward_spatial_typed<typename decltype(type)::type, decltype(linear)::value, decltype(weighted)::value>(
        problem, out);
  });
}

void backward_spatial(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args) {
  dispatch_backward(problem, [&](auto type, auto probability, auto weighted) {
    backward_spatial_typed<typename decltype(type)::type, decltype(probability)::value, decltype(weighted)::value>(
        problem, args);
  });
}

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
