// Every op of torch_manualbp, declared once; the kernels register per backend (CPU: csrc/*.cpp,
// CUDA: csrc/cuda/*.cu); fake kernels, autograd, batching rules and autocast in torch_manualbp/layers/<layer>.py.
// Also the Python module torch_manualbp._C: how this build runs, and the LinearSigmoid ops called below
// autograd for the eager path of LinearSigmoidFunction (csrc/eager_calls.cpp).
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <mutex>
#include <set>
#include <thread>

#include "cpu/dispatch.h"
#include "eager_calls.h"

TORCH_LIBRARY(torch_manualbp, m) {
  // y = sigmoid(input @ weight^T + bias); bias None, (out,) or any shape broadcasting to the output.
  m.def("linear_sigmoid_forward(Tensor input, Tensor weight, Tensor? bias) -> Tensor");
  // (grad_input, grad_weight, grad_bias) from the saved output; the ones output_mask leaves out are
  // empty tensors. bias_sizes: the bias's shape (its gradient comes back in it), None without a bias.
  m.def(
      "linear_sigmoid_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor output, "
      "SymInt[]? bias_sizes, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // (loss, max_logit, log_sum, normalizer): loss as F.cross_entropy returns it, plus the z-loss
  // lse_square_scale * lse^2 per non-ignored position, of the logits softcap * tanh(x / softcap) when softcap is
  // given; per position (input's shape without the class dim, float32 for float16/bfloat16 input) the softmax
  // statistics m = max_c x_c and log s = log sum_c exp(x_c - m) of those logits, kept apart (logsumexp =
  // m + log s) so that the backward forms softmax = exp(x - m) / s at full precision for logits of any size;
  // normalizer a 0-dim tensor the cross-entropy was divided by (the total target weight or count for 'mean',
  // 1 otherwise; the z-loss's 'mean' divides by the number of non-ignored positions).
  m.def(
      "softmax_cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, str reduction, "
      "SymInt ignore_index, float label_smoothing, float lse_square_scale=0.0, float? softcap=None) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // (grad_input, grad_target): grad_target only for probability targets and when output_mask[1];
  // what output_mask leaves out is an empty tensor.
  m.def(
      "softmax_cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, "
      "Tensor max_logit, Tensor log_sum, Tensor normalizer, str reduction, SymInt ignore_index, float label_smoothing, "
      "bool[2] output_mask, float lse_square_scale=0.0, float? softcap=None) -> (Tensor, Tensor)");

  // (loss, grad_input, grad_linear_weight, grad_linear_bias) of F.cross_entropy(F.linear(input, linear_weight,
  // linear_bias), target, ...) plus the z-loss lse_square_scale * lse^2 and the softcap s * tanh(z / s), computed
  // chunk by chunk (chunk_budget bytes of logits at a time) without materialising the logits. grad_mask (scalar
  // reductions only): the gradients for an upstream gradient of 1, computed while each chunk is in cache
  // (grad_linear_weight summed in float32 and rounded once to a float16/bfloat16 input's dtype, grad_linear_bias
  // float32 there); the rest are empty.
  m.def(
      "linear_cross_entropy_forward(Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, "
      "Tensor? weight, str reduction, SymInt ignore_index, float label_smoothing, float lse_square_scale, "
      "float? softcap, bool[3] grad_mask, int chunk_budget) -> (Tensor, Tensor, Tensor, Tensor)");
  // (grad_input, grad_linear_weight, grad_linear_bias, grad_target) for the upstream gradient grad_loss, the
  // logits recomputed chunk by chunk; grad_target only for probability targets; what output_mask leaves out
  // is an empty tensor.
  m.def(
      "linear_cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor linear_weight, Tensor? linear_bias, "
      "Tensor target, Tensor? weight, str reduction, SymInt ignore_index, float label_smoothing, "
      "float lse_square_scale, float? softcap, bool[4] output_mask, int chunk_budget) -> (Tensor, Tensor, Tensor, Tensor)");

  // Vocab-parallel losses (csrc/vocab_parallel.cpp; torch_manualbp/layers/vocab_parallel.py combines the ranks):
  // this rank's classes [class_offset, class_offset + C_r) of total_classes, target indices global. The
  // statistics ops return (tokens, 6) partials per token over this rank's classes (max m_r, sum of exp(z' - m_r),
  // sum of a_c (z'_c - m_r), sum of a_c or of the class weights, the target's z' and class weight where it is
  // here, else 0); the gradient ops form the gradient of this rank's block from the global statistics
  // (tokens, 4) = (max, log sum, sum of a_c, lse) and per-token scales of the cross-entropy and the z-loss.
  // input (tokens, C_r) logits:
  m.def(
      "vocab_parallel_cross_entropy_statistics(Tensor input, Tensor target, Tensor? weight, SymInt ignore_index, "
      "float label_smoothing, float? softcap, int class_offset, int total_classes) -> Tensor");
  m.def(
      "vocab_parallel_cross_entropy_gradient(Tensor input, Tensor target, Tensor? weight, Tensor statistics, "
      "Tensor ce_scale, Tensor z_scale, SymInt ignore_index, float label_smoothing, float lse_square_scale, "
      "float? softcap, int class_offset, int total_classes, bool[2] output_mask) -> (Tensor, Tensor)");
  // input (*, in_features), linear_weight (C_r, in_features) this rank's rows; grad_input is this rank's share.
  m.def(
      "vocab_parallel_linear_cross_entropy_statistics(Tensor input, Tensor linear_weight, Tensor? linear_bias, "
      "Tensor target, Tensor? weight, SymInt ignore_index, float label_smoothing, float? softcap, int class_offset, "
      "int total_classes, int chunk_budget) -> Tensor");
  m.def(
      "vocab_parallel_linear_cross_entropy_gradient(Tensor input, Tensor linear_weight, Tensor? linear_bias, "
      "Tensor target, Tensor? weight, Tensor statistics, Tensor ce_scale, Tensor z_scale, SymInt ignore_index, "
      "float label_smoothing, float lse_square_scale, float? softcap, int class_offset, int total_classes, "
      "bool[4] output_mask, int chunk_budget) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace {

// The number of distinct threads that actually run an at::parallel_for body: shows that the kernels were
// built with OpenMP (without -fopenmp at::parallel_for silently runs on one thread).
int64_t kernel_threads_used() {
  std::mutex mutex;
  std::set<std::thread::id> threads;
  at::parallel_for(0, 4096, 1, [&](int64_t, int64_t) {
    volatile double sink = 0;
    for (int i = 0; i < 200000; ++i) sink = sink + i;
    std::lock_guard<std::mutex> lock(mutex);
    threads.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(threads.size());
}

bool built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

bool built_with_cuda() {
#ifdef TORCH_MANUALBP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "torch_manualbp compiled ops (registered under torch.ops.torch_manualbp)";
  module.def("kernel_threads_used", &kernel_threads_used,
             "Distinct threads that ran one at::parallel_for of the CPU kernels");
  module.def("built_with_openmp", &built_with_openmp);
  module.def("built_with_cuda", &built_with_cuda);
  module.def(
      "cpu_simd_level", [] { return std::string(torch_manualbp::cpu::simd_level_name(torch_manualbp::cpu::simd_level())); },
      "The SIMD level whose CPU kernels run in this process (DEFAULT, AVX2 or AVX512)");
  module.def("linear_sigmoid_forward_below_autograd", &torch_manualbp::linear_sigmoid_forward_below_autograd,
             "torch.ops.torch_manualbp.linear_sigmoid_forward with the autograd keys excluded");
  module.def("linear_sigmoid_backward_below_autograd", &torch_manualbp::linear_sigmoid_backward_below_autograd,
             "torch.ops.torch_manualbp.linear_sigmoid_backward with the autograd keys excluded");
}
