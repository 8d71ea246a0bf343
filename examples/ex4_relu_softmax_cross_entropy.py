"""Example 4: a ReLU hidden layer, a linear layer, then softmax-cross-entropy against a one-hot label, summed.

    h = relu(W_1 x)              x: (3,), W_1: (4, 3)          native ops
    z = W_2 h                    W_2: (3, 4), three classes    native ops
    p = softmax(z)
    loss = -sum_c q_c log p_c    q: the one-hot label          torch_manualbp.functional.softmax_cross_entropy(
                                                                   z, q, reduction='sum'), q as a probability target
By hand: the softmax Jacobian dp/dz = diag(p) - p p^T times dloss/dp = -q/p collapses to dz = p - q;
then dW_2 = dz h^T, dh = W_2^T dz, dz_1 = dh * [W_1 x > 0] (ReLU passes the gradient where it was
positive), dW_1 = dz_1 x^T. Only dz = p - q is the library's own backward here (csrc/softmax_cross_entropy.cpp);
the ReLU and the linear layers are PyTorch's, so their gradients test the library's dz as it flows back.

Run: python examples/ex4_relu_softmax_cross_entropy.py
"""
import sys

import torch
import torch.nn.functional as F

from _compare import GradientReport
from torch_manualbp.functional import softmax_cross_entropy

torch.manual_seed(0)
DTYPE = torch.float64
LABEL = 1


def logits(x, weight_1, weight_2):
    return weight_2 @ torch.relu(weight_1 @ x)


def main():
    x = torch.randn(3, dtype=DTYPE)
    weight_1 = torch.randn(4, 3, dtype=DTYPE, requires_grad=True)
    weight_2 = torch.randn(3, 4, dtype=DTYPE, requires_grad=True)
    one_hot = F.one_hot(torch.tensor(LABEL), num_classes=3).to(DTYPE)

    library_loss = softmax_cross_entropy(logits(x, weight_1, weight_2), one_hot, reduction="sum")
    autograd_loss = F.cross_entropy(logits(x, weight_1, weight_2), one_hot, reduction="sum")
    print(__doc__.split("\n\n")[0])
    print(f"\nloss: library {library_loss.item():.10f}   autograd {autograd_loss.item():.10f}")

    with torch.no_grad():
        pre_activation = weight_1 @ x
        hidden = torch.relu(pre_activation)
        grad_z = torch.softmax(weight_2 @ hidden, dim=0) - one_hot
        grad_hidden = weight_2.t() @ grad_z
        by_hand = {
            "W_1": torch.outer(grad_hidden * (pre_activation > 0), x),
            "W_2": torch.outer(grad_z, hidden),
        }
    print(f"p - q = {[round(v, 4) for v in grad_z.tolist()]}   (dloss/dz by hand)")

    library_grads = torch.autograd.grad(library_loss, (weight_1, weight_2))
    autograd_grads = torch.autograd.grad(autograd_loss, (weight_1, weight_2))
    report = GradientReport()
    for name, library, autograd in zip(("W_1", "W_2"), library_grads, autograd_grads):
        report.compare(name, library, autograd, by_hand[name])
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
