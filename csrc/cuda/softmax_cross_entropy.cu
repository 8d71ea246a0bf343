// SoftmaxCrossEntropy on CUDA: the CPU op's math and semantics (derivation above the ops in
// csrc/softmax_cross_entropy.cpp), in the same letters:
//   x the logits of one position, m = max_c x_c, s = sum_c exp(x_c - m), lse = m + log s,
//   a_c the coefficients of the linear term, A = sum_c a_c, lin = sum_c a_c (x_c - m),
//   index targets:        loss = (1 - eps) w_t ((m - x_t) + log s) + (eps / C) (A log s - lin),  a_c = w_c
//   probability targets:  loss = A log s - lin,  a_c = w_c q_c,  q_c = (1 - eps) p_c + eps / C
// (without label smoothing the index loss is only its first term; without weight w_c = 1).
//
// The input is read as a contiguous (outer, classes, inner) array, one position per (outer, inner) pair.
// A position's classes are visited by a group of threads:
//   kWarp   inner == 1, C <= kWarpRowMaxClasses: one warp per row, kRowsPerBlock rows per block;
//   kBlock  inner == 1, larger C: one block per row;
//   kThread inner > 1 (N, C, d1, ...): one thread per position looping over the classes, so that
//           consecutive threads read consecutive positions (coalesced, untransposed).
// Forward: each thread keeps online statistics (m, s, A, lin) of its classes in one pass, the group
// merges them with shuffles (and shared memory across warps), and the group's first thread writes m, log s and
// the loss. 'mean' / 'sum': each block adds its positions' losses in a fixed order into one partial, and a
// one-block kernel adds the partials in order: no float atomics, the same bits on every run.
// Backward: one read of x (and p) and one write of the gradient per position.
// All arithmetic is in acc_t: float for float32, bfloat16 and float16, double for float64. No host sync.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <limits>

#include "unrequested_output.h"
#include "cuda/device_helpers.cuh"
#include "softmax_cross_entropy_args.h"

namespace torch_manualbp {
namespace {

using cuda::block_sum;
using cuda::ceil_div;
using cuda::exp_of;
using cuda::kWarpSize;
using cuda::log_of;

constexpr int64_t kWarpRowMaxClasses = 1024;
constexpr int kRowsPerBlock = 8;  // kWarp: warps (rows) per block
constexpr int kThreadsPerBlock = kRowsPerBlock * kWarpSize;
constexpr int kMaxBlockThreads = 1024;
constexpr int kFinishThreads = 1024;

enum class Group { kThread, kWarp, kBlock };

template <typename acc_t>
constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
template <typename acc_t>
constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();

// One problem as the kernels read it (kernel argument, by value).
template <typename scalar_t>
struct Problem {
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

  __device__ acc_t class_weight(int64_t c) const { return weight != nullptr ? weight[c] : acc_t(1); }
};

// Where a thread works: its position, the element of class 0 there, the distance from one class to the
// next, and which classes it visits (first, first + step, ...). The leader writes the position's results.
struct Placement {
  int64_t position;
  int64_t base;
  int64_t class_stride;
  int64_t first_class;
  int64_t class_step;
  bool leader;
};

template <Group kGroup>
__device__ __forceinline__ Placement place_thread(int64_t classes, int64_t inner) {
  Placement here;
  if constexpr (kGroup == Group::kThread) {
    here.position = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    const int64_t n = here.position / inner;
    here.base = n * classes * inner + (here.position - n * inner);
    here.class_stride = inner;
    here.first_class = 0;
    here.class_step = 1;
    here.leader = true;
  } else if constexpr (kGroup == Group::kWarp) {
    here.position = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
    here.base = here.position * classes;
    here.class_stride = 1;
    here.first_class = threadIdx.x % kWarpSize;
    here.class_step = kWarpSize;
    here.leader = threadIdx.x % kWarpSize == 0;
  } else {
    here.position = blockIdx.x;
    here.base = here.position * classes;
    here.class_stride = 1;
    here.first_class = threadIdx.x;
    here.class_step = blockDim.x;
    here.leader = threadIdx.x == 0;
  }
  return here;
}

// The sum of `value` over the threads of one position's group (every thread gets it).
template <Group kGroup, typename T>
__device__ __forceinline__ T group_sum(T value, T* scratch) {
  if constexpr (kGroup == Group::kWarp) return cuda::warp_sum(value);
  if constexpr (kGroup == Group::kBlock) return block_sum(value, scratch);
  return value;
}

// The linear coefficient a_c of class c (element e): w_c q_c for probability targets, w_c otherwise.
template <typename scalar_t, bool kProbability>
__device__ __forceinline__ at::opmath_type<scalar_t> linear_coef(const Problem<scalar_t>& pb, int64_t e, int64_t c) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (kProbability) {
    return (pb.keep * static_cast<acc_t>(pb.prob_target[e]) + pb.smooth) * pb.class_weight(c);
  } else {
    return pb.class_weight(c);
  }
}

// ---- forward --------------------------------------------------------------------------------------------
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

template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> merge(const RowStats<acc_t>& a, const RowStats<acc_t>& b, bool linear) {
  RowStats<acc_t> out;
  out.max = cuda::nan_max(a.max, b.max);
  out.sum_exp = rescaled_sum(a, out.max) + rescaled_sum(b, out.max);
  out.coef_sum = linear ? a.coef_sum + b.coef_sum : acc_t(0);
  out.linear = linear ? shifted_linear(a, out.max) + shifted_linear(b, out.max) : acc_t(0);
  return out;
}

template <typename acc_t>
__device__ __forceinline__ RowStats<acc_t> warp_merge(RowStats<acc_t> st, bool linear) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const RowStats<acc_t> other{
        __shfl_xor_sync(0xffffffffu, st.max, offset), __shfl_xor_sync(0xffffffffu, st.sum_exp, offset),
        __shfl_xor_sync(0xffffffffu, st.coef_sum, offset), __shfl_xor_sync(0xffffffffu, st.linear, offset)};
    st = merge(st, other, linear);
  }
  return st;
}

// Every thread of the group gets the statistics of all the group's logits.
template <Group kGroup, typename acc_t>
__device__ __forceinline__ RowStats<acc_t> group_merge(RowStats<acc_t> st, bool linear, RowStats<acc_t>* scratch) {
  if constexpr (kGroup == Group::kThread) return st;
  st = warp_merge(st, linear);
  if constexpr (kGroup == Group::kBlock) {
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    if (lane == 0) scratch[warp] = st;
    __syncthreads();
    if (warp == 0) {
      st = warp_merge(lane < static_cast<int>(blockDim.x / kWarpSize) ? scratch[lane] : no_logits<acc_t>(), linear);
      if (lane == 0) scratch[0] = st;
    }
    __syncthreads();
    st = scratch[0];
  }
  return st;
}

template <typename acc_t>
struct PositionLoss {
  acc_t loss;
  acc_t weight;  // the position's share of the 'mean' normalizer
};

// m, log s and the loss of one position from its statistics; ignored index targets give 0 and weigh
// nothing. Non-finite rows store m in both (so that m + log s is their lse: NaN, +inf or -inf).
template <typename scalar_t, bool kProbability>
__device__ PositionLoss<at::opmath_type<scalar_t>> finish_position(
    const Problem<scalar_t>& pb, const RowStats<at::opmath_type<scalar_t>>& st, const Placement& here,
    at::opmath_type<scalar_t>* max_logit, at::opmath_type<scalar_t>* log_sum_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool finite = st.max > -kInf<acc_t> && st.max < kInf<acc_t>;  // false for NaN
  const acc_t log_sum = log_of(st.sum_exp);
  max_logit[here.position] = st.max;
  log_sum_out[here.position] = finite ? log_sum : st.max;
  if constexpr (kProbability) {
    if (pb.classes == 0) return {acc_t(0), acc_t(1)};
    return {finite ? st.coef_sum * log_sum - st.linear : kNaN<acc_t>, acc_t(1)};
  } else {
    const int64_t t = pb.class_target[here.position];
    if (t == pb.ignore_index) return {acc_t(0), acc_t(0)};
    CUDA_KERNEL_ASSERT_PRINTF(
        t >= 0 && t < pb.classes, "softmax_cross_entropy: Target %lld is out of bounds (classes: %lld).",
        static_cast<long long>(t), static_cast<long long>(pb.classes));
    const acc_t w_t = pb.class_weight(t);
    if (!finite) return {kNaN<acc_t>, w_t};
    const acc_t nll = (st.max - static_cast<acc_t>(pb.input[here.base + t * here.class_stride])) + log_sum;
    if (!pb.smoothing) return {w_t * nll, w_t};
    return {pb.keep * w_t * nll + pb.smooth * (st.coef_sum * log_sum - st.linear), w_t};
  }
}

template <typename scalar_t>
struct ForwardOutputs {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* loss;       // per position ('none'), or nullptr
  acc_t* max_logit;     // per position: m
  acc_t* log_sum;       // per position: log s
  acc_t* block_loss;    // per block partial sums ('mean' / 'sum'), or nullptr
  acc_t* block_weight;  // per block partial normalizer weights, with block_loss
};

template <typename scalar_t, bool kProbability, Group kGroup>
__global__ void forward_kernel(Problem<scalar_t> pb, ForwardOutputs<scalar_t> out) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ RowStats<acc_t> stats_scratch[kWarpSize];
  __shared__ acc_t sum_scratch[kWarpSize];
  const Placement here = place_thread<kGroup>(pb.classes, pb.inner);
  const bool linear = kProbability || pb.smoothing;
  PositionLoss<acc_t> result{acc_t(0), acc_t(0)};
  if (here.position < pb.positions) {  // the same for a whole warp (kWarp) or block (kBlock)
    RowStats<acc_t> st = no_logits<acc_t>();
#pragma unroll 4
    for (int64_t c = here.first_class; c < pb.classes; c += here.class_step) {
      const int64_t e = here.base + c * here.class_stride;
      add_logit(st, static_cast<acc_t>(pb.input[e]), linear ? linear_coef<scalar_t, kProbability>(pb, e, c) : acc_t(0), linear);
    }
    st = group_merge<kGroup>(st, linear, stats_scratch);
    if (here.leader) {
      result = finish_position<scalar_t, kProbability>(pb, st, here, out.max_logit, out.log_sum);
      if (out.loss != nullptr) out.loss[here.position] = static_cast<scalar_t>(result.loss);
    }
  }
  if (out.block_loss == nullptr) return;  // the same for the whole grid
  // The block's positions in thread order (non-leaders add exactly 0).
  const acc_t block_loss = block_sum(here.leader ? result.loss : acc_t(0), sum_scratch);
  const acc_t block_weight = block_sum(here.leader ? result.weight : acc_t(0), sum_scratch);
  if (threadIdx.x == 0) {
    out.block_loss[blockIdx.x] = block_loss;
    out.block_weight[blockIdx.x] = block_weight;
  }
}

// The reduced loss and the normalizer from the blocks' partials, added in block order by one block:
//   'sum': loss = sum, normalizer 1;  'mean': loss = sum / normalizer with the normalizer the total weight of
//   the non-ignored index targets (all ignored: 0 / 0 = NaN, as torch) or `count_normalizer` (probability
//   targets: the number of positions, 0 when there are no classes).
template <typename scalar_t>
__global__ void finish_reduction_kernel(
    const at::opmath_type<scalar_t>* block_loss, const at::opmath_type<scalar_t>* block_weight, int64_t blocks,
    bool mean, bool weight_normalized, at::opmath_type<scalar_t> count_normalizer, scalar_t* loss,
    at::opmath_type<scalar_t>* normalizer) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t scratch[kWarpSize];
  acc_t loss_sum = acc_t(0), weight_sum = acc_t(0);
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
    loss_sum += block_loss[b];
    weight_sum += block_weight[b];
  }
  loss_sum = block_sum(loss_sum, scratch);
  weight_sum = block_sum(weight_sum, scratch);
  if (threadIdx.x == 0) {
    const acc_t norm = !mean ? acc_t(1) : (weight_normalized ? weight_sum : count_normalizer);
    normalizer[0] = norm;
    loss[0] = static_cast<scalar_t>(mean ? loss_sum / norm : loss_sum);
  }
}

// ---- backward -------------------------------------------------------------------------------------------
// Every loss above is  loss = sum_c a_c (lse - x_c)  with a_c independent of x, and d lse / d x_j = y_j
// (the softmax), so the softmax Jacobian times the cross-entropy gradient collapses to
//   d loss / d x_j = sum_c a_c (y_j - [c == j]) = y_j A - a_j,       y_j = exp(x_j - m) / s
//   index:        A = (1 - eps) w_t + (eps / C) W,   a_j = (eps / C) w_j + (1 - eps) w_t [j == t]
//   probability:  A = sum_c w_c q_c,                 a_j = w_j q_j
//   d loss / d p_j = (1 - eps) w_j ((m - x_j) + log s)                  (probability targets, via q_j)
// times g = grad_loss (of the position, or the one value) / normalizer. y is exp(x - m) times A g / s
// (x - m is exact where y is not negligible: full precision at any logit offset). Ignored positions get
// 0; a non-finite m (NaN, +inf or an all -inf row) gives NaN, as torch's log_softmax backward does.
template <typename scalar_t>
struct BackwardArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_loss;  // per position (grad_per_position) or one value
  bool grad_per_position;
  const acc_t* max_logit;   // per position: m
  const acc_t* log_sum;     // per position: log s
  const acc_t* normalizer;  // one value
  const acc_t* weight_sum;  // W = sum_c w_c (index targets with weight and label smoothing), or nullptr
  scalar_t* grad_input;     // like input, or nullptr
  scalar_t* grad_target;    // like input (probability targets), or nullptr
};

template <typename scalar_t, bool kProbability, Group kGroup>
__global__ void backward_kernel(Problem<scalar_t> pb, BackwardArgs<scalar_t> bw) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t sum_scratch[kWarpSize];
  const Placement here = place_thread<kGroup>(pb.classes, pb.inner);
  if (here.position >= pb.positions) return;  // the same for a whole warp (kWarp) or block (kBlock)
  const acc_t m = bw.max_logit[here.position];
  const acc_t log_s = bw.log_sum[here.position];
  if (!(m > -kInf<acc_t> && m < kInf<acc_t>)) {
    for (int64_t c = here.first_class; c < pb.classes; c += here.class_step) {
      const int64_t e = here.base + c * here.class_stride;
      if (bw.grad_input != nullptr) bw.grad_input[e] = static_cast<scalar_t>(kNaN<acc_t>);
      if (bw.grad_target != nullptr) bw.grad_target[e] = static_cast<scalar_t>(kNaN<acc_t>);
    }
    return;
  }
  const acc_t g = static_cast<acc_t>(bw.grad_loss[bw.grad_per_position ? here.position : 0]) / bw.normalizer[0];
  const acc_t inv_s = acc_t(1) / exp_of(log_s);

  if constexpr (!kProbability) {
    const int64_t t = pb.class_target[here.position];
    if (t == pb.ignore_index) {
      if (bw.grad_input == nullptr) return;
      for (int64_t c = here.first_class; c < pb.classes; c += here.class_step) {
        bw.grad_input[here.base + c * here.class_stride] = static_cast<scalar_t>(acc_t(0));
      }
      return;
    }
    CUDA_KERNEL_ASSERT_PRINTF(
        t >= 0 && t < pb.classes, "softmax_cross_entropy_backward: Target %lld is out of bounds (classes: %lld).",
        static_cast<long long>(t), static_cast<long long>(pb.classes));
    if (bw.grad_input == nullptr) return;
    const acc_t w_t = pb.class_weight(t);
    const acc_t total_weight = bw.weight_sum != nullptr ? bw.weight_sum[0] : static_cast<acc_t>(pb.classes);
    const acc_t gA_s = g * (pb.keep * w_t + (pb.smoothing ? pb.smooth * total_weight : acc_t(0))) * inv_s;
    const acc_t g_smooth = pb.smoothing ? g * pb.smooth : acc_t(0);
    const acc_t target_term = g * pb.keep * w_t;
#pragma unroll 4
    for (int64_t c = here.first_class; c < pb.classes; c += here.class_step) {
      const int64_t e = here.base + c * here.class_stride;
      const acc_t e_xm = exp_of(static_cast<acc_t>(pb.input[e]) - m);  // s y
      acc_t grad = e_xm * gA_s - g_smooth * pb.class_weight(c);
      if (c == t) grad -= target_term;
      bw.grad_input[e] = static_cast<scalar_t>(grad);
    }
  } else {
    acc_t coef_sum = acc_t(0);
    for (int64_t c = here.first_class; c < pb.classes; c += here.class_step) {
      coef_sum += linear_coef<scalar_t, true>(pb, here.base + c * here.class_stride, c);
    }
    const acc_t gA_s = g * group_sum<kGroup>(coef_sum, sum_scratch) * inv_s;
    const acc_t g_keep = g * pb.keep;
#pragma unroll 4
    for (int64_t c = here.first_class; c < pb.classes; c += here.class_step) {
      const int64_t e = here.base + c * here.class_stride;
      const acc_t x = static_cast<acc_t>(pb.input[e]);
      if (bw.grad_input != nullptr) {
        bw.grad_input[e] = static_cast<scalar_t>(exp_of(x - m) * gA_s - g * linear_coef<scalar_t, true>(pb, e, c));
      }
      if (bw.grad_target != nullptr) {
        bw.grad_target[e] = static_cast<scalar_t>(g_keep * pb.class_weight(c) * ((m - x) + log_s));
      }
    }
  }
}

// ---- launch ---------------------------------------------------------------------------------------------
struct LaunchPlan {
  Group group;
  int64_t blocks;  // 0 when there are no positions
  int threads;
};

LaunchPlan plan_launch(const SoftmaxCrossEntropyShape& shape) {
  LaunchPlan plan;
  const int64_t positions = shape.positions();
  if (shape.inner > 1) {
    plan = {Group::kThread, ceil_div(positions, kThreadsPerBlock), kThreadsPerBlock};
  } else if (shape.classes <= kWarpRowMaxClasses) {
    plan = {Group::kWarp, ceil_div(positions, kRowsPerBlock), kThreadsPerBlock};
  } else {
    int threads = 128;
    while (threads < kMaxBlockThreads && threads * 8 < shape.classes) threads *= 2;
    plan = {Group::kBlock, positions, threads};
  }
  TORCH_CHECK(
      plan.blocks <= INT_MAX, "softmax_cross_entropy: ", positions, " positions of ", shape.classes,
      " classes are too many for one CUDA grid");
  return plan;
}

template <typename scalar_t>
Problem<scalar_t> make_problem(
    const SoftmaxCrossEntropyShape& shape, const at::Tensor& input, const at::Tensor& target, const at::Tensor& weight,
    int64_t ignore_index, double label_smoothing) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool probability = shape.target_kind == TargetKind::kProbability;
  Problem<scalar_t> pb;
  pb.input = input.const_data_ptr<scalar_t>();
  pb.class_target = probability ? nullptr : target.const_data_ptr<int64_t>();
  pb.prob_target = probability ? target.const_data_ptr<scalar_t>() : nullptr;
  pb.weight = weight.defined() ? weight.const_data_ptr<acc_t>() : nullptr;
  pb.classes = shape.classes;
  pb.inner = shape.inner;
  pb.positions = shape.positions();
  pb.ignore_index = ignore_index;
  pb.keep = acc_t(1) - static_cast<acc_t>(label_smoothing);
  pb.smooth = shape.classes > 0 ? static_cast<acc_t>(label_smoothing) / static_cast<acc_t>(shape.classes) : acc_t(0);
  pb.smoothing = label_smoothing > 0;
  return pb;
}

template <typename scalar_t, bool kProbability>
void launch_forward(const LaunchPlan& plan, const Problem<scalar_t>& pb, const ForwardOutputs<scalar_t>& out) {
  const dim3 grid(static_cast<unsigned>(plan.blocks));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (plan.group) {
    case Group::kThread:
      forward_kernel<scalar_t, kProbability, Group::kThread><<<grid, plan.threads, 0, stream>>>(pb, out);
      break;
    case Group::kWarp:
      forward_kernel<scalar_t, kProbability, Group::kWarp><<<grid, plan.threads, 0, stream>>>(pb, out);
      break;
    case Group::kBlock:
      forward_kernel<scalar_t, kProbability, Group::kBlock><<<grid, plan.threads, 0, stream>>>(pb, out);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kProbability>
void launch_backward(const LaunchPlan& plan, const Problem<scalar_t>& pb, const BackwardArgs<scalar_t>& bw) {
  const dim3 grid(static_cast<unsigned>(plan.blocks));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  switch (plan.group) {
    case Group::kThread:
      backward_kernel<scalar_t, kProbability, Group::kThread><<<grid, plan.threads, 0, stream>>>(pb, bw);
      break;
    case Group::kWarp:
      backward_kernel<scalar_t, kProbability, Group::kWarp><<<grid, plan.threads, 0, stream>>>(pb, bw);
      break;
    case Group::kBlock:
      backward_kernel<scalar_t, kProbability, Group::kBlock><<<grid, plan.threads, 0, stream>>>(pb, bw);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Index targets as int64 (uint8 ones converted: a positions-sized copy), probabilities as they are; both
// contiguous. The weight in acc_t, contiguous; undefined without one.
at::Tensor target_for_kernels(const at::Tensor& target, TargetKind kind) {
  return (kind == TargetKind::kClassIndex ? target.to(at::kLong) : target).contiguous();
}

// ---- ops ------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy_forward_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing) {
  const SoftmaxCrossEntropyShape shape = check_softmax_cross_entropy_forward(
      input, target, weight, reduction, ignore_index, label_smoothing);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::ScalarType acc_dtype = softmax_stats_dtype(input.scalar_type());
  const bool probability = shape.target_kind == TargetKind::kProbability;
  const bool per_position = shape.reduction == LossReduction::kNone;
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target_for_kernels(target, shape.target_kind);
  const at::Tensor w = weight_for_kernels(weight, acc_dtype);

  at::Tensor loss, max_logit, log_sum, normalizer;
  std::tie(loss, max_logit, log_sum, normalizer) = empty_forward_outputs(shape, input);
  const LaunchPlan plan = plan_launch(shape);
  at::Tensor block_sums = at::empty({per_position ? 0 : 2, plan.blocks}, input.options().dtype(acc_dtype));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "softmax_cross_entropy_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Problem<scalar_t> pb = make_problem<scalar_t>(shape, x, t, w, ignore_index, label_smoothing);
    ForwardOutputs<scalar_t> out;
    out.loss = per_position ? loss.mutable_data_ptr<scalar_t>() : nullptr;
    out.max_logit = max_logit.mutable_data_ptr<acc_t>();
    out.log_sum = log_sum.mutable_data_ptr<acc_t>();
    out.block_loss = per_position ? nullptr : block_sums.mutable_data_ptr<acc_t>();
    out.block_weight = per_position ? nullptr : out.block_loss + plan.blocks;
    if (plan.blocks > 0) {
      if (probability) {
        launch_forward<scalar_t, true>(plan, pb, out);
      } else {
        launch_forward<scalar_t, false>(plan, pb, out);
      }
    }
    if (per_position) {
      normalizer.fill_(1);
    } else {
      const bool mean = shape.reduction == LossReduction::kMean;
      const acc_t count_normalizer = shape.classes > 0 ? static_cast<acc_t>(shape.positions()) : acc_t(0);
      finish_reduction_kernel<scalar_t><<<1, kFinishThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          out.block_loss, out.block_weight, plan.blocks, mean, !probability, count_normalizer,
          loss.mutable_data_ptr<scalar_t>(), normalizer.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {loss, max_logit, log_sum, normalizer};
}

std::tuple<at::Tensor, at::Tensor> softmax_cross_entropy_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& max_logit, const at::Tensor& log_sum,
    const at::Tensor& normalizer, c10::string_view reduction, int64_t ignore_index, double label_smoothing,
    std::array<bool, 2> output_mask) {
  const SoftmaxCrossEntropyShape shape = check_softmax_cross_entropy_backward(
      grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing);
  const bool probability = shape.target_kind == TargetKind::kProbability;
  const bool want_input = output_mask[0];
  const bool want_target = output_mask[1] && probability;
  const auto nothing = [&] { return unrequested_output(input); };
  if (!want_input && !want_target) return {nothing(), nothing()};

  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::ScalarType acc_dtype = max_logit.scalar_type();
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target_for_kernels(target, shape.target_kind);
  const at::Tensor w = weight_for_kernels(weight, acc_dtype);
  const at::Tensor grad_loss_values = grad_loss.contiguous();
  const at::Tensor m = max_logit.contiguous();
  const at::Tensor log_s = log_sum.contiguous();
  const at::Tensor weight_sum = (!probability && w.defined() && label_smoothing > 0) ? w.sum() : at::Tensor();
  at::Tensor grad_input = want_input ? at::empty(input.sizes(), input.options()) : nothing();
  at::Tensor grad_target = want_target ? at::empty(input.sizes(), input.options()) : nothing();
  const LaunchPlan plan = plan_launch(shape);
  if (plan.blocks == 0) return {grad_input, grad_target};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "softmax_cross_entropy_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Problem<scalar_t> pb = make_problem<scalar_t>(shape, x, t, w, ignore_index, label_smoothing);
    BackwardArgs<scalar_t> bw;
    bw.grad_loss = grad_loss_values.const_data_ptr<scalar_t>();
    bw.grad_per_position = shape.reduction == LossReduction::kNone;
    bw.max_logit = m.const_data_ptr<acc_t>();
    bw.log_sum = log_s.const_data_ptr<acc_t>();
    bw.normalizer = normalizer.const_data_ptr<acc_t>();
    bw.weight_sum = weight_sum.defined() ? weight_sum.const_data_ptr<acc_t>() : nullptr;
    bw.grad_input = want_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    bw.grad_target = want_target ? grad_target.mutable_data_ptr<scalar_t>() : nullptr;
    if (probability) {
      launch_backward<scalar_t, true>(plan, pb, bw);
    } else {
      launch_backward<scalar_t, false>(plan, pb, bw);
    }
  });
  return {grad_input, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_manualbp, CUDA, m) {
  m.impl("softmax_cross_entropy_forward", &softmax_cross_entropy_forward_cuda);
  m.impl("softmax_cross_entropy_backward", &softmax_cross_entropy_backward_cuda);
}

}  // namespace torch_manualbp
