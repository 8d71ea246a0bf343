// The math of one cross-entropy position on CUDA, whatever thread layout visits its classes: the online
// statistics of its logits, the loss from them, and the gradient of each element. The kernels of every
// layout (softmax_cross_entropy.cu) only decide which thread reads which class and how the threads of a
// position merge; an option that changes the per-position math (a transform of the logits, another loss
// term) changes this file alone. The derivation is written above the CPU op (csrc/softmax_cross_entropy.cpp),
// in the same letters:
//   x the logits of one position, m = max_c x_c, s = sum_c exp(x_c - m), lse = m + log s,
//   a_c the coefficients of the linear term, A = sum_c a_c, lin = sum_c a_c (x_c - m),
//   index targets:        loss = (1 - eps) w_t ((m - x_t) + log s) + (eps / C) (A log s - lin),  a_c = w_c
//   probability targets:  loss = A log s - lin,  a_c = w_c q_c,  q_c = (1 - eps) p_c + eps / C
// (without label smoothing the index loss is only its first term; without weight w_c = 1), plus the z-loss
// lambda lse^2 of every non-ignored position; with a softcap s every x is the softcapped logit s tanh(z / s)
// of the input z (logit()), whose derivative 1 - (x / s)^2 multiplies the gradient.
// All arithmetic is in acc_t = at::opmath_type<scalar_t>: float for float32, bfloat16 and float16, double
// for float64.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

#include "cuda/device_helpers.cuh"

namespace torch_manualbp::cuda {

template <typename acc_t>
constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
template <typename acc_t>
constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();

// One problem as the kernels read it (a kernel argument, by value). A position's class c is element
// base + c * class_stride of `input` (and of `prob_target`), where base and class_stride depend on the layout.
template <typename scalar_t>
struct CrossEntropyProblem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* input;        // contiguous (outer, classes, inner)
  const int64_t* class_target;  // index targets: contiguous (outer, inner); else nullptr
  const scalar_t* prob_target;  // probability targets: like input; else nullptr
  const acc_t* weight;          // (classes,) or nullptr
  int64_t classes;
  int64_t inner;
  int64_t positions;
  int64_t ignore_index;
  acc_t keep;      // 1 - eps
  acc_t smooth;    // eps / C
  bool smoothing;  // eps > 0: index targets get the class-weight linear term
  acc_t lambda;    // the z-loss scale (0: none)
  acc_t softcap;   // s (0: none)

  __device__ acc_t class_weight(int64_t c) const { return weight != nullptr ? weight[c] : acc_t(1); }
  // Element e of the logits as the loss sees it: x = s tanh(z / s) with a softcap, the input z otherwise.
  __device__ acc_t logit(int64_t e) const {
    const acc_t z = static_cast<acc_t>(input[e]);
    return softcap > 0 ? softcap * tanh_of(z / softcap) : z;
  }
  // d x / d z = 1 - tanh^2(z / s) = 1 - (x / s)^2 of a softcapped logit x (1 without a softcap).
  __device__ acc_t softcap_derivative(acc_t x) const {
    const acc_t ratio = x / softcap;
    return acc_t(1) - ratio * ratio;
  }
  // Whether the forward needs A and lin (probability targets, or index targets with label smoothing).
  template <bool kProbability>
  __device__ bool has_linear_term() const { return kProbability || smoothing; }
  // The linear coefficient a_c of class c (element e): w_c q_c for probability targets, w_c otherwise.
  template <bool kProbability>
  __device__ acc_t linear_coef(int64_t e, int64_t c) const {
    if constexpr (kProbability) {
      return (keep * static_cast<acc_t>(prob_target[e]) + smooth) * class_weight(c);
    } else {
      return class_weight(c);
    }
  }
};

// ---- forward: online statistics -------------------------------------------------------------------------
// Online statistics of some of a position's logits: max m, s = sum exp(x - m), A = sum a, lin = sum a (x - m).
// When the max grows from m to m', s is rescaled by exp(m - m') and lin shifted by -A (m' - m), so each
// logit is read and exponentiated once. A NaN logit makes m NaN and the row non-finite (its loss is NaN, as
// torch's); a -inf logit adds exactly 0 to s (a masked class) and a (-inf) to lin.
template <typename acc_t>
struct RowStats {
  acc_t max;
  acc_t sum_exp;
  acc_t coef_sum;
  acc_t linear;
};

template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> no_logits() {
  return {-kInf<acc_t>, acc_t(0), acc_t(0), acc_t(0)};
}

template <typename acc_t>
__device__ __forceinline__ void add_logit(RowStats<acc_t>& st, acc_t x, acc_t a, bool linear) {
  if (x > st.max) {
    st.sum_exp = st.sum_exp * exp_of(st.max - x) + acc_t(1);
    if (linear && st.max > -kInf<acc_t>) st.linear -= st.coef_sum * (x - st.max);
    st.max = x;
  } else if (x != x) {
    st.max = x;
  } else if (x > -kInf<acc_t>) {
    st.sum_exp += exp_of(x - st.max);
  }
  if (linear) {
    st.linear += a * (x > -kInf<acc_t> ? x - st.max : x);
    st.coef_sum += a;
  }
}

// The statistics of the classes first, first + step, ... of one position (base, class_stride: where they lie).
template <bool kProbability, typename scalar_t>
__device__ __forceinline__ RowStats<at::opmath_type<scalar_t>> class_stats(
    const CrossEntropyProblem<scalar_t>& pb, int64_t base, int64_t class_stride, int64_t first, int64_t step) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool linear = pb.template has_linear_term<kProbability>();
  RowStats<acc_t> st = no_logits<acc_t>();
#pragma unroll 4
  for (int64_t c = first; c < pb.classes; c += step) {
    const int64_t e = base + c * class_stride;
    add_logit(st, pb.logit(e), linear ? pb.template linear_coef<kProbability>(e, c) : acc_t(0), linear);
  }
  return st;
}

// s and lin of `part` re-expressed against the merged max m (unchanged when part.max is m, or -inf: then
// part holds no finite logit and s is 0).
template <typename acc_t>
__device__ __forceinline__ acc_t rescaled_sum(const RowStats<acc_t>& part, acc_t m) {
  return part.max == m ? part.sum_exp : part.sum_exp * exp_of(part.max - m);
}

template <typename acc_t>
__device__ __forceinline__ acc_t shifted_linear(const RowStats<acc_t>& part, acc_t m) {
  return (part.max == m || !(part.max > -kInf<acc_t>)) ? part.linear : part.linear - part.coef_sum * (m - part.max);
}

// The statistics of two disjoint sets of a position's logits merged (a fixed function of (a, b): the
// layouts merge in a fixed order, so the results are the same on every run).
template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> merge(const RowStats<acc_t>& a, const RowStats<acc_t>& b, bool linear) {
  RowStats<acc_t> out;
  out.max = nan_max(a.max, b.max);
  out.sum_exp = rescaled_sum(a, out.max) + rescaled_sum(b, out.max);
  out.coef_sum = linear ? a.coef_sum + b.coef_sum : acc_t(0);
  out.linear = linear ? shifted_linear(a, out.max) + shifted_linear(b, out.max) : acc_t(0);
  return out;
}

// The statistics of the lane `offset` lanes away, for lanes_reduce (device_helpers.cuh).
template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> shfl_xor(const RowStats<acc_t>& st, int offset) {
  return {shfl_xor(st.max, offset), shfl_xor(st.sum_exp, offset), shfl_xor(st.coef_sum, offset),
          shfl_xor(st.linear, offset)};
}

// merge() as a function object for the reductions of device_helpers.cuh.
template <typename acc_t>
struct MergeStats {
  bool linear;
  __device__ __forceinline__ RowStats<acc_t> operator()(const RowStats<acc_t>& a, const RowStats<acc_t>& b) const {
    return merge(a, b, linear);
  }
};

// ---- forward: the loss of a position -------------------------------------------------------------------------
template <typename acc_t>
struct PositionLoss {
  acc_t loss;     // the cross-entropy
  acc_t weight;   // the position's share of the 'mean' normalizer
  acc_t z_loss;   // lambda lse^2 (0 without a z-loss or when ignored)
  acc_t z_count;  // the position's share of the z-loss's 'mean' normalizer: 1, 0 when ignored
};

// m, log s (written to max_logit / log_sum) and the loss of one position from the statistics of all its
// logits; ignored index targets give 0 and weigh nothing. Non-finite rows store m in both (so that
// m + log s is their lse: NaN, +inf or -inf); their z-loss is that of their logsumexp, m (NaN or inf). An
// out-of-range class index stops the kernel (one message per position: only the position's leader calls this).
template <bool kProbability, typename scalar_t>
__device__ PositionLoss<at::opmath_type<scalar_t>> finish_position(
    const CrossEntropyProblem<scalar_t>& pb, const RowStats<at::opmath_type<scalar_t>>& st, int64_t position,
    int64_t base, int64_t class_stride, at::opmath_type<scalar_t>* max_logit, at::opmath_type<scalar_t>* log_sum_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool finite = st.max > -kInf<acc_t> && st.max < kInf<acc_t>;  // false for NaN
  const acc_t log_sum = log_of(st.sum_exp);
  max_logit[position] = st.max;
  log_sum_out[position] = finite ? log_sum : st.max;
  const acc_t lse = finite ? st.max + log_sum : st.max;
  const acc_t z = pb.lambda > 0 ? pb.lambda * lse * lse : acc_t(0);
  if constexpr (kProbability) {
    if (pb.classes == 0) return {acc_t(0), acc_t(1), z, acc_t(1)};
    return {finite ? st.coef_sum * log_sum - st.linear : kNaN<acc_t>, acc_t(1), z, acc_t(1)};
  } else {
    const int64_t t = pb.class_target[position];
    if (t == pb.ignore_index) return {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    CUDA_KERNEL_ASSERT_PRINTF(
        t >= 0 && t < pb.classes, "softmax_cross_entropy: Target %lld is out of bounds (classes: %lld).",
        static_cast<long long>(t), static_cast<long long>(pb.classes));
    const acc_t w_t = pb.class_weight(t);
    if (!finite) return {kNaN<acc_t>, w_t, z, acc_t(1)};
    const acc_t nll = (st.max - pb.logit(base + t * class_stride)) + log_sum;
    if (!pb.smoothing) return {w_t * nll, w_t, z, acc_t(1)};
    return {pb.keep * w_t * nll + pb.smooth * (st.coef_sum * log_sum - st.linear), w_t, z, acc_t(1)};
  }
}

// ---- backward ---------------------------------------------------------------------------------------------
// Every loss above is  loss = sum_c a_c (lse - x_c)  with a_c independent of x, and d lse / d x_j = y_j
// (the softmax), so the softmax Jacobian times the cross-entropy gradient collapses to
//   d loss / d x_j = sum_c a_c (y_j - [c == j]) = y_j A - a_j,       y_j = exp(x_j - m) / s
//   index:        A = (1 - eps) w_t + (eps / C) W,   a_j = (eps / C) w_j + (1 - eps) w_t [j == t]
//   probability:  A = sum_c w_c q_c,                 a_j = w_j q_j
//   d loss / d p_j = (1 - eps) w_j ((m - x_j) + log s)                  (probability targets, via q_j)
// times g = grad_loss (of the position, or the one value) / normalizer. y is exp(x - m) times A g / s
// (x - m is exact where y is not negligible: full precision at any logit offset). The z-loss adds
//   d (lambda lse^2) / d x_j = 2 lambda lse y_j
// times gz = grad_loss / (the z-loss's normalizer): y's factor becomes (g A + gz 2 lambda lse) / s. A softcap
// multiplies d loss / d x_j by 1 - (x_j / s)^2 (the gradient with respect to the input z_j; d loss / d p keeps
// its formula, in x). Ignored positions get 0; a non-finite m (NaN, +inf or an all -inf row) gives NaN, as
// torch's log_softmax backward does.
template <typename scalar_t>
struct BackwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_loss;  // per position (grad_per_position) or one value
  bool grad_per_position;
  const acc_t* max_logit;   // per position: m
  const acc_t* log_sum;     // per position: log s
  const acc_t* normalizer;  // one value
  const acc_t* z_normalizer;  // one value: the z-loss's 'mean' normalizer, or nullptr (1)
  const acc_t* weight_sum;  // W = sum_c w_c (index targets with weight and label smoothing), or nullptr
  scalar_t* grad_input;     // like input, or nullptr
  scalar_t* grad_target;    // like input (probability targets), or nullptr
};

// What the gradient of every element of one position needs.
template <typename acc_t>
struct PositionGradient {
  enum Kind { kRegular, kZero, kNaN } kind;  // kZero: an ignored position; kNaN: a non-finite row
  acc_t m;
  acc_t log_s;
  acc_t g;            // grad_loss / normalizer
  acc_t gA_s;         // (g A + gz 2 lambda lse) / s: exp(x - m) times this is (g A + gz 2 lambda lse) y
  acc_t g_keep;       // g (1 - eps)
  acc_t g_smooth;     // index targets: g eps / C (0 without label smoothing)
  acc_t target_term;  // index targets: g (1 - eps) w_t, subtracted at class t
  int64_t target;     // index targets: t
};

// The per-position factors of the gradient. `coef_sum` is A for probability targets (the caller's
// threads sum linear_coef over the position's classes); index targets ignore it. An out-of-range class
// index stops the kernel; only the thread with `report` set (one per position) prints the message, and
// no thread reads the class weight out of range.
template <bool kProbability, typename scalar_t>
__device__ __forceinline__ PositionGradient<at::opmath_type<scalar_t>> position_gradient(
    const CrossEntropyProblem<scalar_t>& pb, const BackwardArgs<scalar_t>& bw, int64_t position,
    at::opmath_type<scalar_t> coef_sum, bool report) {
  using acc_t = at::opmath_type<scalar_t>;
  using Gradient = PositionGradient<acc_t>;
  Gradient pg{};
  pg.m = bw.max_logit[position];
  pg.log_s = bw.log_sum[position];
  if (!(pg.m > -kInf<acc_t> && pg.m < kInf<acc_t>)) {
    pg.kind = Gradient::kNaN;
    return pg;
  }
  pg.kind = Gradient::kRegular;
  const acc_t grad_loss = static_cast<acc_t>(bw.grad_loss[bw.grad_per_position ? position : 0]);
  pg.g = grad_loss / bw.normalizer[0];
  pg.g_keep = pg.g * pb.keep;
  const acc_t inv_s = acc_t(1) / exp_of(pg.log_s);
  acc_t z_term = acc_t(0);  // gz 2 lambda lse
  if (pb.lambda > 0) {
    const acc_t g_z = bw.z_normalizer != nullptr ? grad_loss / bw.z_normalizer[0] : grad_loss;
    z_term = g_z * acc_t(2) * pb.lambda * (pg.m + pg.log_s);
  }
  if constexpr (kProbability) {
    pg.gA_s = (pg.g * coef_sum + z_term) * inv_s;
  } else {
    const int64_t t = pb.class_target[position];
    if (t == pb.ignore_index) {
      pg.kind = Gradient::kZero;
      return pg;
    }
    if (report) {
      CUDA_KERNEL_ASSERT_PRINTF(
          t >= 0 && t < pb.classes, "softmax_cross_entropy_backward: Target %lld is out of bounds (classes: %lld).",
          static_cast<long long>(t), static_cast<long long>(pb.classes));
    }
    const acc_t w_t = (t >= 0 && t < pb.classes) ? pb.class_weight(t) : acc_t(0);
    const acc_t total_weight = bw.weight_sum != nullptr ? bw.weight_sum[0] : static_cast<acc_t>(pb.classes);
    pg.gA_s = (pg.g * (pb.keep * w_t + (pb.smoothing ? pb.smooth * total_weight : acc_t(0))) + z_term) * inv_s;
    pg.g_smooth = pb.smoothing ? pg.g * pb.smooth : acc_t(0);
    pg.target_term = pg.g_keep * w_t;
    pg.target = t;
  }
  return pg;
}

// d loss / d z of element e (class c, logit x = pb.logit(e)): (g (y A - a) + gz 2 lambda lse y) dx/dz.
template <bool kProbability, typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> grad_input_element(
    const CrossEntropyProblem<scalar_t>& pb, const PositionGradient<at::opmath_type<scalar_t>>& pg,
    at::opmath_type<scalar_t> x, int64_t e, int64_t c) {
  using acc_t = at::opmath_type<scalar_t>;
  if (pg.kind == PositionGradient<acc_t>::kNaN) return kNaN<acc_t>;
  if (pg.kind == PositionGradient<acc_t>::kZero) return acc_t(0);
  const acc_t e_xm = exp_of(x - pg.m);  // s y
  acc_t grad;
  if constexpr (kProbability) {
    grad = e_xm * pg.gA_s - pg.g * pb.template linear_coef<true>(e, c);
  } else {
    grad = e_xm * pg.gA_s - pg.g_smooth * pb.class_weight(c);
    if (c == pg.target) grad -= pg.target_term;
  }
  return pb.softcap > 0 ? grad * pb.softcap_derivative(x) : grad;
}

// d loss / d p of element e (class c, logit x), probability targets: g (1 - eps) w_c ((m - x) + log s).
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> grad_target_element(
    const CrossEntropyProblem<scalar_t>& pb, const PositionGradient<at::opmath_type<scalar_t>>& pg,
    at::opmath_type<scalar_t> x, int64_t c) {
  using acc_t = at::opmath_type<scalar_t>;
  if (pg.kind == PositionGradient<acc_t>::kNaN) return kNaN<acc_t>;
  return pg.g_keep * pb.class_weight(c) * ((pg.m - x) + pg.log_s);
}

}  // namespace torch_manualbp::cuda
