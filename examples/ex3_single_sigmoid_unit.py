"""Example 3: a single sigmoid unit with bias, trained on two samples with a squared-error loss.

    y_n = sigmoid(w . x_n + b)                 w: (1, 2), b: (1,), two samples x_n: (2,)
    loss = sum_n (y_n - t_n)^2 / 2             torch_manualbp.functional.linear_sigmoid(x, w, b)

By hand: dz_n = (y_n - t_n) * y_n * (1 - y_n);  dw = sum_n dz_n x_n;  db = sum_n dz_n.
The bias gradient is the sum of dz over the batch: csrc/cpu/linear_sigmoid_kernel.cpp fuses that sum
into the same pass that computes dz. A few steps of gradient descent, with the gradients compared at each.

Run: python examples/ex3_single_sigmoid_unit.py
"""
import sys

import torch

from _compare import GradientReport
from torch_manualbp.functional import linear_sigmoid

DTYPE = torch.float64
SAMPLES = torch.tensor([[0.5, -1.0], [1.5, 2.0]], dtype=DTYPE)
TARGETS = torch.tensor([[0.0], [1.0]], dtype=DTYPE)
LEARNING_RATE = 2.0
STEPS = 3


def main():
    weight = torch.tensor([[0.3, -0.2]], dtype=DTYPE, requires_grad=True)
    bias = torch.tensor([0.1], dtype=DTYPE, requires_grad=True)
    print(__doc__.split("\n\n")[0])
    report = GradientReport()
    for step in range(STEPS):
        library_y = linear_sigmoid(SAMPLES, weight, bias)
        library_loss = ((library_y - TARGETS) ** 2).sum() / 2
        autograd_y = torch.sigmoid(SAMPLES @ weight.t() + bias)
        autograd_loss = ((autograd_y - TARGETS) ** 2).sum() / 2
        w1, w2 = weight.detach().view(-1).tolist()
        print(f"\n=== step {step}: w = [{w1:.4f}, {w2:.4f}], b = {bias.item():.4f}")
        print(f"loss: library {library_loss.item():.10f}   autograd {autograd_loss.item():.10f}")

        with torch.no_grad():
            y = autograd_y
            grad_z = (y - TARGETS) * y * (1 - y)
            by_hand = {"w": grad_z.t() @ SAMPLES, "b": grad_z.sum(dim=0)}

        library_grads = torch.autograd.grad(library_loss, (weight, bias))
        autograd_grads = torch.autograd.grad(autograd_loss, (weight, bias))
        for name, library, autograd in zip(("w", "b"), library_grads, autograd_grads):
            report.compare(name, library, autograd, by_hand[name])
        with torch.no_grad():  # one step of gradient descent, with the library's gradients
            weight -= LEARNING_RATE * library_grads[0]
            bias -= LEARNING_RATE * library_grads[1]
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
