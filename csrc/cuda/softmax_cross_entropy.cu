// SoftmaxCrossEntropy on CUDA: the CPU op's math and semantics (derivation above the ops in
// csrc/softmax_cross_entropy.cpp). The math of one position (its statistics, loss and gradient) is
// cuda/cross_entropy_position.cuh; this file decides which threads visit which classes, merges what the
// threads of a position found, and launches.
//
// The input is read as a contiguous (outer, classes, inner) array, one position per (outer, inner) pair.
// A position's classes are visited by a group of threads, in one of three layouts:
//   kRowLanes  inner == 1, C <= kRowLanesMaxClasses: `lanes` consecutive lanes of a warp per row (a power
//              of two, 1 to 32, about kMinClassesPerLane classes each), so a warp holds 32 / lanes rows;
//              merged with shuffles inside the lane group;
//   kRowBlock  inner == 1, larger C: one block per row, merged with shuffles and across warps;
//   kSpatial   inner > 1 (N, C, d1, ...): 2-D blocks, x over consecutive positions (coalesced reads of the
//              untransposed (N, C, H, W)), y over class lanes that split each position's classes (class
//              y, y + blockDim.y, ...), merged by a fixed tree over y in shared memory. The class split is
//              chosen from the shape alone: enough threads to fill a large GPU when positions are few.
// Forward: each thread keeps online statistics (m, s, A, lin) of its classes in one pass, the group
// merges them, and the group's leader writes m, log s and the loss. 'mean' / 'sum': each block adds its
// positions' losses (and z-losses) in a fixed order into one partial, and a one-block kernel adds the
// partials in order, in double: no float atomics, the same bits on every run. The softcap and the z-loss
// are per-position math (cross_entropy_position.cuh): no layout changes for them.
// Backward: one read of x (and p) and one write of the gradient per element.
// No host sync. The launch never exceeds a kernel's __launch_bounds__ (max_threads of its layout): the
// registers of every build, debug included, fit the block (tools/cuda_resources.py checks the cubins).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "unrequested_output.h"
#include "cuda/cross_entropy_position.cuh"
#include "cuda/device_helpers.cuh"
#include "softmax_cross_entropy_args.h"

namespace torch_manualbp {
namespace {

using cuda::BackwardArgs;
using cuda::CrossEntropyProblem;
using cuda::kWarpSize;
using cuda::PositionLoss;
using cuda::RowStats;

enum class Layout { kRowLanes, kRowBlock, kSpatial };

constexpr int64_t kRowLanesMaxClasses = 1024;
constexpr int64_t kMinClassesPerLane = 4;        // kRowLanes: lanes per row grow until each has at most this many
constexpr int kRowLanesThreads = 256;            // kRowLanes: threads per block
constexpr int kRowBlockMinThreads = 128;         // kRowBlock: threads per block grow from here...
constexpr int64_t kRowBlockClassesPerThread = 8;  // ...while each thread would have more classes than this
constexpr int kSpatialThreads = 256;             // kSpatial: threads per block when the class split allows
constexpr int kSpatialMinPositions = 8;          // kSpatial: positions per block at least (8 floats: a 32-byte sector)
constexpr int kSpatialMaxClassLanes = 128;       // kSpatial: class lanes per position at most
constexpr int64_t kSpatialMinClassesPerLane = 8;
constexpr int64_t kFillThreads = int64_t(1) << 18;  // about the resident threads of a 132-SM GPU
constexpr int kFinishThreads = 1024;

// The most threads per block each layout is launched with: the kernels' __launch_bounds__.
constexpr int max_threads(Layout layout) {
  return layout == Layout::kRowLanes ? kRowLanesThreads : 1024;
}
static_assert(kSpatialMinPositions * kSpatialMaxClassLanes <= max_threads(Layout::kSpatial));
static_assert(kSpatialThreads <= max_threads(Layout::kSpatial));

// Shared memory a layout's group reduction needs, in values: a tree over the whole block (kSpatial), one
// value per warp (kRowBlock), none (kRowLanes).
constexpr int group_scratch(Layout layout) {
  return layout == Layout::kSpatial ? max_threads(layout) : layout == Layout::kRowBlock ? kWarpSize : 1;
}

// Where a thread works: its position (valid: one that exists), the element of class 0 there, the distance
// from one class to the next, and which classes it visits (first, first + step, ...). The leader (one
// thread per position) writes the position's results.
struct Placement {
  int64_t position;
  int64_t base;
  int64_t class_stride;
  int64_t first_class;
  int64_t class_step;
  bool valid;
  bool leader;
};

template <Layout kLayout, typename scalar_t>
__device__ __forceinline__ Placement place_thread(const CrossEntropyProblem<scalar_t>& pb, int lanes) {
  Placement here;
  if constexpr (kLayout == Layout::kRowLanes) {
    const int rows_per_block = static_cast<int>(blockDim.x) / lanes;
    here.position = blockIdx.x * static_cast<int64_t>(rows_per_block) + threadIdx.x / lanes;
    here.base = here.position * pb.classes;
    here.class_stride = 1;
    here.first_class = threadIdx.x % lanes;
    here.class_step = lanes;
    here.leader = here.first_class == 0;
  } else if constexpr (kLayout == Layout::kRowBlock) {
    here.position = blockIdx.x;
    here.base = here.position * pb.classes;
    here.class_stride = 1;
    here.first_class = threadIdx.x;
    here.class_step = blockDim.x;
    here.leader = threadIdx.x == 0;
  } else {
    here.position = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    const int64_t n = here.position / pb.inner;
    here.base = n * pb.classes * pb.inner + (here.position - n * pb.inner);
    here.class_stride = pb.inner;
    here.first_class = threadIdx.y;
    here.class_step = blockDim.y;
    here.leader = threadIdx.y == 0;
  }
  here.valid = here.position < pb.positions;
  return here;
}

// combine over the threads of one position's group; every thread of the block must call it (threads of
// positions past the end take part with `identity`), and every thread gets its group's result.
template <Layout kLayout, typename T, typename Combine>
__device__ __forceinline__ T group_reduce(T value, T identity, int lanes, T* scratch, const Combine& combine) {
  if constexpr (kLayout == Layout::kRowLanes) return cuda::lanes_reduce(value, lanes, combine);
  if constexpr (kLayout == Layout::kRowBlock) return cuda::block_reduce(value, identity, scratch, combine);
  if constexpr (kLayout == Layout::kSpatial) return cuda::tree_reduce_y(value, scratch, combine);
}

// ---- forward --------------------------------------------------------------------------------------------
template <typename scalar_t>
struct ForwardOutputs {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* loss;       // per position ('none'), or nullptr
  acc_t* max_logit;     // per position: m
  acc_t* log_sum;       // per position: log s
  acc_t* block_loss;    // per block partial sums ('mean' / 'sum'), or nullptr
  acc_t* block_weight;  // per block partial normalizer weights, with block_loss
  acc_t* block_z;       // per block partial z-loss sums ('mean' / 'sum' with a z-loss), or nullptr
  acc_t* block_z_count; // per block count of the positions whose z-loss counts, with block_z
};

// The block's sums of `value` and `weight` over its threads, in thread order, stored by its first thread at
// [blockIdx.x]. Every thread of the block must call it.
template <typename acc_t>
__device__ __forceinline__ void store_block_sums(acc_t value, acc_t weight, acc_t* values, acc_t* weights, acc_t* scratch) {
  const acc_t value_sum = cuda::block_sum(value, scratch);
  const acc_t weight_sum = cuda::block_sum(weight, scratch);
  if (cuda::flat_thread_index() == 0) {
    values[blockIdx.x] = value_sum;
    weights[blockIdx.x] = weight_sum;
  }
}

template <typename scalar_t, bool kProbability, Layout kLayout>
__global__ void __launch_bounds__(max_threads(kLayout))
    forward_kernel(CrossEntropyProblem<scalar_t> pb, ForwardOutputs<scalar_t> out, int lanes) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ RowStats<acc_t> stats_scratch[group_scratch(kLayout)];
  __shared__ acc_t sum_scratch[kWarpSize];
  const Placement here = place_thread<kLayout>(pb, lanes);
  RowStats<acc_t> st = cuda::no_logits<acc_t>();
  if (here.valid) {
    st = cuda::class_stats<kProbability>(pb, here.base, here.class_stride, here.first_class, here.class_step);
  }
  const cuda::MergeStats<acc_t> merge_stats{pb.template has_linear_term<kProbability>()};
  st = group_reduce<kLayout>(st, cuda::no_logits<acc_t>(), lanes, stats_scratch, merge_stats);
  PositionLoss<acc_t> result{acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  if (here.valid && here.leader) {
    result = cuda::finish_position<kProbability>(
        pb, st, here.position, here.base, here.class_stride, out.max_logit, out.log_sum);
    if (out.loss != nullptr) out.loss[here.position] = static_cast<scalar_t>(result.loss + result.z_loss);
  }
  if (out.block_loss == nullptr) return;  // the same for the whole grid
  // The block's positions in thread order (everyone but the leaders adds exactly 0).
  store_block_sums(result.loss, result.weight, out.block_loss, out.block_weight, sum_scratch);
  if (out.block_z != nullptr) store_block_sums(result.z_loss, result.z_count, out.block_z, out.block_z_count, sum_scratch);
}

// The reduced loss and the normalizer from the blocks' partials, added in block order by one block, in
// double whatever the dtype (as the CPU op: the total of many positions keeps its precision):
//   'sum': loss = sum, normalizer 1;  'mean': loss = sum / normalizer with the normalizer the total weight of
//   the non-ignored index targets (all ignored: 0 / 0 = NaN, as torch) or `count_normalizer` (probability
//   targets: the number of positions, 0 when there are no classes).
// With a z-loss (`block_z` not null) its total is added: divided by the count of its positions for 'mean'.
template <typename scalar_t>
__global__ void __launch_bounds__(kFinishThreads) finish_reduction_kernel(
    ForwardOutputs<scalar_t> partials, int64_t blocks, bool mean, bool weight_normalized,
    at::opmath_type<scalar_t> count_normalizer, scalar_t* loss, at::opmath_type<scalar_t>* normalizer) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ double scratch[kWarpSize];
  const bool z_loss = partials.block_z != nullptr;
  double loss_sum = 0, weight_sum = 0, z_sum = 0, z_count = 0;
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
    loss_sum += partials.block_loss[b];
    weight_sum += partials.block_weight[b];
    if (z_loss) {
      z_sum += partials.block_z[b];
      z_count += partials.block_z_count[b];
    }
  }
  loss_sum = cuda::block_sum(loss_sum, scratch);
  weight_sum = cuda::block_sum(weight_sum, scratch);
  if (z_loss) {
    z_sum = cuda::block_sum(z_sum, scratch);
    z_count = cuda::block_sum(z_count, scratch);
  }
  if (threadIdx.x == 0) {
    const acc_t norm = !mean ? acc_t(1) : (weight_normalized ? static_cast<acc_t>(weight_sum) : count_normalizer);
    normalizer[0] = norm;
    const acc_t total = static_cast<acc_t>(loss_sum);
    acc_t result = mean ? total / norm : total;
    if (z_loss) {
      const acc_t z_total = static_cast<acc_t>(z_sum);
      result += mean ? z_total / static_cast<acc_t>(z_count) : z_total;
    }
    loss[0] = static_cast<scalar_t>(result);
  }
}

// ---- backward -------------------------------------------------------------------------------------------
// The gradient of each element from the per-position factors (cross_entropy_position.cuh); probability
// targets first sum A = sum_c a_c over the group.
template <typename scalar_t, bool kProbability, Layout kLayout>
__global__ void __launch_bounds__(max_threads(kLayout))
    backward_kernel(CrossEntropyProblem<scalar_t> pb, BackwardArgs<scalar_t> bw, int lanes) {
  using acc_t = at::opmath_type<scalar_t>;
  const Placement here = place_thread<kLayout>(pb, lanes);
  acc_t coef_sum = acc_t(0);
  if constexpr (kProbability) {
    __shared__ acc_t sum_scratch[group_scratch(kLayout)];
    if (here.valid) {
      for (int64_t c = here.first_class; c < pb.classes; c += here.class_step) {
        coef_sum += pb.template linear_coef<true>(here.base + c * here.class_stride, c);
      }
    }
    coef_sum = group_reduce<kLayout>(coef_sum, acc_t(0), lanes, sum_scratch, cuda::Plus{});
  }
  if (!here.valid) return;  // after the group's reduction: every thread took part
  const cuda::PositionGradient<acc_t> pg = cuda::position_gradient<kProbability>(pb, bw, here.position, coef_sum, here.leader);
#pragma unroll 4
  for (int64_t c = here.first_class; c < pb.classes; c += here.class_step) {
    const int64_t e = here.base + c * here.class_stride;
    const acc_t x = pb.logit(e);
    if (bw.grad_input != nullptr) {
      bw.grad_input[e] = static_cast<scalar_t>(cuda::grad_input_element<kProbability>(pb, pg, x, e, c));
    }
    if constexpr (kProbability) {
      if (bw.grad_target != nullptr) bw.grad_target[e] = static_cast<scalar_t>(cuda::grad_target_element(pb, pg, x, c));
    }
  }
}

// ---- launch ---------------------------------------------------------------------------------------------
struct LaunchPlan {
  Layout layout;
  int64_t blocks;  // 0 when there are no positions
  dim3 block;
  int lanes;  // kRowLanes: lanes per row
};

// The layout and launch of a shape; a function of the shape alone (never of the GPU), so that the order
// of every reduction, and so the result, is the same on every GPU.
LaunchPlan plan_launch(const SoftmaxCrossEntropyShape& shape) {
  LaunchPlan plan;
  const int64_t positions = shape.positions();
  const int64_t classes = shape.classes;
  if (shape.inner > 1) {
    // Split each position's classes over more lanes while the grid is short of kFillThreads and each lane
    // keeps kSpatialMinClassesPerLane classes; the block keeps kSpatialThreads threads while it can.
    int class_lanes = 1;
    while (class_lanes < kSpatialMaxClassLanes && positions * class_lanes < kFillThreads &&
           2 * class_lanes * kSpatialMinClassesPerLane <= classes) {
      class_lanes *= 2;
    }
    const int position_lanes = std::max(kSpatialMinPositions, kSpatialThreads / class_lanes);
    plan = {Layout::kSpatial, cuda::ceil_div(positions, position_lanes),
            dim3(static_cast<unsigned>(position_lanes), static_cast<unsigned>(class_lanes)), 1};
  } else if (classes <= kRowLanesMaxClasses) {
    int lanes = 1;
    while (lanes < kWarpSize && lanes * kMinClassesPerLane < classes) lanes *= 2;
    plan = {Layout::kRowLanes, cuda::ceil_div(positions, kRowLanesThreads / lanes), dim3(kRowLanesThreads), lanes};
  } else {
    int threads = kRowBlockMinThreads;
    while (threads < max_threads(Layout::kRowBlock) && threads * kRowBlockClassesPerThread < classes) threads *= 2;
    plan = {Layout::kRowBlock, positions, dim3(static_cast<unsigned>(threads)), 1};
  }
  TORCH_CHECK(
      plan.blocks <= INT_MAX, "softmax_cross_entropy: ", positions, " positions of ", classes,
      " classes are too many for one CUDA grid");
  TORCH_INTERNAL_ASSERT(static_cast<int>(plan.block.x * plan.block.y) <= max_threads(plan.layout));
  return plan;
}

template <typename scalar_t>
CrossEntropyProblem<scalar_t> make_problem(
    const SoftmaxCrossEntropyShape& shape, const at::Tensor& input, const at::Tensor& target, const at::Tensor& weight,
    int64_t ignore_index, double label_smoothing, double lse_square_scale, std::optional<double> softcap) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool probability = shape.target_kind == TargetKind::kProbability;
  CrossEntropyProblem<scalar_t> pb;
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
  pb.lambda = static_cast<acc_t>(lse_square_scale);
  pb.softcap = static_cast<acc_t>(softcap.value_or(0.0));
  return pb;
}

// Calls launch(std::integral_constant<Layout, layout>) for the layout of the plan.
template <typename Launch>
void for_layout(Layout layout, const Launch& launch) {
  switch (layout) {
    case Layout::kRowLanes:
      launch(std::integral_constant<Layout, Layout::kRowLanes>{});
      break;
    case Layout::kRowBlock:
      launch(std::integral_constant<Layout, Layout::kRowBlock>{});
      break;
    case Layout::kSpatial:
      launch(std::integral_constant<Layout, Layout::kSpatial>{});
      break;
  }
}

// Launches kernel_of(kProbability, layout) (std::bool_constant, std::integral_constant) for the target
// kind and the plan's layout, with the plan's grid and block, on the current stream.
template <typename KernelOf, typename... Args>
void launch(const LaunchPlan& plan, bool probability, const KernelOf& kernel_of, const Args&... args) {
  const auto run = [&](auto kernel) {
    kernel<<<dim3(static_cast<unsigned>(plan.blocks)), plan.block, 0, at::cuda::getCurrentCUDAStream()>>>(
        args..., plan.lanes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  for_layout(plan.layout, [&](auto layout) {
    if (probability) {
      run(kernel_of(std::true_type{}, layout));
    } else {
      run(kernel_of(std::false_type{}, layout));
    }
  });
}

// Index targets as int64 (uint8 ones converted: a positions-sized copy), probabilities as they are; both
// contiguous.
at::Tensor target_for_kernels(const at::Tensor& target, TargetKind kind) {
  return (kind == TargetKind::kClassIndex ? target.to(at::kLong) : target).contiguous();
}

// ---- ops ------------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy_forward_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing, double lse_square_scale,
    std::optional<double> softcap) {
  const SoftmaxCrossEntropyShape shape = check_softmax_cross_entropy_forward(
      input, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap);
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
  const bool z_loss = lse_square_scale > 0 && !per_position;
  at::Tensor block_sums =
      at::empty({per_position ? 0 : (z_loss ? 4 : 2), plan.blocks}, input.options().dtype(acc_dtype));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "softmax_cross_entropy_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const CrossEntropyProblem<scalar_t> pb =
        make_problem<scalar_t>(shape, x, t, w, ignore_index, label_smoothing, lse_square_scale, softcap);
    ForwardOutputs<scalar_t> out;
    out.loss = per_position ? loss.mutable_data_ptr<scalar_t>() : nullptr;
    out.max_logit = max_logit.mutable_data_ptr<acc_t>();
    out.log_sum = log_sum.mutable_data_ptr<acc_t>();
    out.block_loss = per_position ? nullptr : block_sums.mutable_data_ptr<acc_t>();
    out.block_weight = per_position ? nullptr : out.block_loss + plan.blocks;
    out.block_z = z_loss ? out.block_loss + 2 * plan.blocks : nullptr;
    out.block_z_count = z_loss ? out.block_loss + 3 * plan.blocks : nullptr;
    if (plan.blocks > 0) {
      const auto kernel_of = [](auto kind, auto layout) {
        return forward_kernel<scalar_t, decltype(kind)::value, decltype(layout)::value>;
      };
      launch(plan, probability, kernel_of, pb, out);
    }
    if (per_position) {
      normalizer.fill_(1);
    } else {
      const bool mean = shape.reduction == LossReduction::kMean;
      const acc_t count_normalizer = shape.classes > 0 ? static_cast<acc_t>(shape.positions()) : acc_t(0);
      finish_reduction_kernel<scalar_t><<<1, kFinishThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          out, plan.blocks, mean, !probability, count_normalizer,
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
    std::array<bool, 2> output_mask, double lse_square_scale, std::optional<double> softcap) {
  const SoftmaxCrossEntropyShape shape = check_softmax_cross_entropy_backward(
      grad_loss, input, target, weight, max_logit, log_sum, normalizer, reduction, ignore_index, label_smoothing,
      lse_square_scale, softcap);
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
  const at::Tensor z_normalizer = z_loss_normalizer(shape, t, ignore_index, lse_square_scale, acc_dtype);
  at::Tensor grad_input = want_input ? at::empty(input.sizes(), input.options()) : nothing();
  at::Tensor grad_target = want_target ? at::empty(input.sizes(), input.options()) : nothing();
  const LaunchPlan plan = plan_launch(shape);
  if (plan.blocks == 0) return {grad_input, grad_target};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "softmax_cross_entropy_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const CrossEntropyProblem<scalar_t> pb =
        make_problem<scalar_t>(shape, x, t, w, ignore_index, label_smoothing, lse_square_scale, softcap);
    BackwardArgs<scalar_t> bw;
    bw.grad_loss = grad_loss_values.const_data_ptr<scalar_t>();
    bw.grad_per_position = shape.reduction == LossReduction::kNone;
    bw.max_logit = m.const_data_ptr<acc_t>();
    bw.log_sum = log_s.const_data_ptr<acc_t>();
    bw.normalizer = normalizer.const_data_ptr<acc_t>();
    bw.z_normalizer = z_normalizer.defined() ? z_normalizer.const_data_ptr<acc_t>() : nullptr;
    bw.weight_sum = weight_sum.defined() ? weight_sum.const_data_ptr<acc_t>() : nullptr;
    bw.grad_input = want_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    bw.grad_target = want_target ? grad_target.mutable_data_ptr<scalar_t>() : nullptr;
    const auto kernel_of = [](auto kind, auto layout) {
      return backward_kernel<scalar_t, decltype(kind)::value, decltype(layout)::value>;
    };
    launch(plan, probability, kernel_of, pb, bw);
  });
  return {grad_input, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_manualbp, CUDA, m) {
  m.impl("softmax_cross_entropy_forward", &softmax_cross_entropy_forward_cuda);
  m.impl("softmax_cross_entropy_backward", &softmax_cross_entropy_backward_cuda);
}

}  // namespace torch_manualbp
