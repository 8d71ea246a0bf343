"""Example 5: a 1-20-1 network with per-sample biases, loss the squared Frobenius norm of the error.

    H = sigmoid(x W_1^T + B_1)      x: (N, 1), W_1: (20, 1), B_1: (N, 20), one bias row per sample
                                    torch_manualbp.functional.linear_sigmoid(x, W_1, B_1)
    y = H W_2^T + b_2               W_2: (1, 20), b_2: (N, 1), one output bias per sample (native ops)
    loss = ||y - Y||_F^2            Y: (N, 1), the targets

Every tensor gets a gradient, inputs and targets included:
    dy = 2 (y - Y)    dY = -dy    db_2 = dy    dW_2 = dy^T H    dH = dy W_2
    dZ = dH * H * (1 - H)    dB_1 = dZ (a bias of the output's shape keeps its gradient per sample)
    dW_1 = dZ^T x    dx = dZ W_1
The per-sample bias is a bias that broadcasts to the output without being summed over the batch: the
library returns its gradient in the bias's own shape (csrc/linear_sigmoid.cpp: at::sum_to the bias's
shape, which for a bias as large as the output sums nothing).

Run: python examples/ex5_per_sample_bias_net.py
"""
import sys

import torch
import torch.nn.functional as F

from _compare import GradientReport
from torch_manualbp.functional import linear_sigmoid

torch.manual_seed(0)
DTYPE = torch.float64
SAMPLES, HIDDEN = 3, 20


def network(sigmoid_layer, x, weight_1, bias_1, weight_2, bias_2, target):
    hidden = sigmoid_layer(x, weight_1, bias_1)
    y = F.linear(hidden, weight_2) + bias_2
    return ((y - target) ** 2).sum()


def native_sigmoid_layer(input, weight, bias):
    return torch.sigmoid(F.linear(input, weight) + bias)


def main():
    names = ["x", "W_1", "B_1", "W_2", "b_2", "Y"]
    shapes = [(SAMPLES, 1), (HIDDEN, 1), (SAMPLES, HIDDEN), (1, HIDDEN), (SAMPLES, 1), (SAMPLES, 1)]
    tensors = [torch.randn(shape, dtype=DTYPE, requires_grad=True) for shape in shapes]

    library_loss = network(linear_sigmoid, *tensors)
    autograd_loss = network(native_sigmoid_layer, *tensors)
    print(__doc__.split("\n\n")[0])
    print(f"\nloss: library {library_loss.item():.10f}   autograd {autograd_loss.item():.10f}")

    library_grads = torch.autograd.grad(library_loss, tensors)
    autograd_grads = torch.autograd.grad(autograd_loss, tensors)
    report = GradientReport()
    for name, library, autograd in zip(names, library_grads, autograd_grads):
        report.compare(name, library, autograd)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
