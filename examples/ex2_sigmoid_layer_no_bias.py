"""Example 2: one sigmoid layer without bias, y = sigmoid(W x), 3x3 W, loss ||y||^2.

    z = W x            W: (3, 3), x: (3,)
    y = sigmoid(z)     torch_manualbp.functional.linear_sigmoid(x, W) with no bias
    loss = sum_i y_i^2

By hand: dy = 2 y;  dz = dy * y * (1 - y)  (sigmoid'(z) = y (1 - y));  dW = dz x^T (outer product);
dx = W^T dz. The library computes the same three lines in csrc/linear_sigmoid.cpp (dz in the kernel
sigmoid_backward of csrc/cpu/linear_sigmoid_kernel.cpp, dW and dx as GEMMs), for a batch at once.

Run: python examples/ex2_sigmoid_layer_no_bias.py
"""
import sys

import torch

from _compare import GradientReport
from torch_manualbp.functional import linear_sigmoid

torch.manual_seed(0)
DTYPE = torch.float64


def main():
    weight = torch.randn(3, 3, dtype=DTYPE, requires_grad=True)
    x = torch.randn(3, dtype=DTYPE, requires_grad=True)

    library_y = linear_sigmoid(x, weight)
    library_loss = (library_y**2).sum()
    autograd_y = torch.sigmoid(weight @ x)
    autograd_loss = (autograd_y**2).sum()
    print(__doc__.split("\n\n")[0])
    print(f"\nloss: library {library_loss.item():.10f}   autograd {autograd_loss.item():.10f}")

    with torch.no_grad():
        y = autograd_y
        grad_z = 2 * y * y * (1 - y)
        by_hand = {"W": torch.outer(grad_z, x), "x": weight.t() @ grad_z}

    library_grads = torch.autograd.grad(library_loss, (weight, x))
    autograd_grads = torch.autograd.grad(autograd_loss, (weight, x))
    report = GradientReport()
    for name, library, autograd in zip(("W", "x"), library_grads, autograd_grads):
        report.compare(name, library, autograd, by_hand[name])
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
