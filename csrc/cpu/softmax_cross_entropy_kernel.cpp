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
//
// This file: the kernel table of one SIMD level, each entry choosing the layout's loops;
// cpu/cross_entropy_math.h: what both layouts share.
#include "cpu/cross_entropy_math.h"

namespace torch_manualbp::cpu::CPU_CAPABILITY {
namespace {

void forward(const CrossEntropyProblem& problem, const CrossEntropyForwardOutputs& out) {
  if (problem.inner == 1) {
    forward_rows(problem, out);
  } else {
    forward_spatial(problem, out);
  }
}

void backward(const CrossEntropyProblem& problem, const CrossEntropyBackwardArgs& args) {
  if (problem.inner == 1) {
    backward_rows(problem, args);
  } else {
    backward_spatial(problem, args);
  }
}

}  // namespace

extern const SoftmaxCrossEntropyKernels softmax_cross_entropy_kernels = {&forward, &backward};

}  // namespace torch_manualbp::cpu::CPU_CAPABILITY
