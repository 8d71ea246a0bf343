"""Example 1: a 6-layer network 4-4-4-4-4-4-1, five sigmoid layers then a plain linear layer.

    h0 = x                                   x: (4,), one sample
    h_k = sigmoid(W_k h_{k-1} + b_k)         k = 1..5, W_k: (4, 4), b_k: (4,)   torch_manualbp.LinearSigmoid's op
    y = W_6 h_5 + b_6                        W_6: (1, 4), b_6: (1,)             plain linear layer (F.linear)
    loss = (y - Y)^2 / 2

Backward, from the top: dy = y - Y; dW_6 = dy h_5^T; dh_5 = W_6^T dy; then through each sigmoid layer
dz_k = dh_k * h_k * (1 - h_k), dW_k = dz_k h_{k-1}^T, db_k = dz_k, dh_{k-1} = W_k^T dz_k. Each factor
h (1 - h) <= 1/4, so the gradients shrink layer by layer towards the input: the vanishing gradient.

Run: python examples/ex1_six_layer_sigmoid_net.py
"""
import sys

import torch
import torch.nn.functional as F

from _compare import GradientReport
from torch_manualbp.functional import linear_sigmoid

torch.manual_seed(0)
DTYPE = torch.float64


def network(sigmoid_layer, x, target, params):
    hidden = x
    for weight, bias in params[:-1]:
        hidden = sigmoid_layer(hidden, weight, bias)
    weight, bias = params[-1]
    y = F.linear(hidden, weight, bias)
    return ((y - target) ** 2).sum() / 2


def native_sigmoid_layer(input, weight, bias):
    return torch.sigmoid(F.linear(input, weight, bias))


def main():
    x = torch.randn(4, dtype=DTYPE)
    target = torch.randn(1, dtype=DTYPE)
    sizes = [(4, 4)] * 5 + [(1, 4)]
    params = [
        (torch.randn(out_features, in_features, dtype=DTYPE, requires_grad=True),
         torch.randn(out_features, dtype=DTYPE, requires_grad=True))
        for out_features, in_features in sizes
    ]
    flat = [tensor for pair in params for tensor in pair]

    library_loss = network(linear_sigmoid, x, target, params)
    autograd_loss = network(native_sigmoid_layer, x, target, params)
    print(__doc__.split("\n\n")[0])
    print(f"\nloss: library {library_loss.item():.10f}   autograd {autograd_loss.item():.10f}")

    library_grads = torch.autograd.grad(library_loss, flat)
    autograd_grads = torch.autograd.grad(autograd_loss, flat)
    report = GradientReport()
    for layer in range(len(params)):
        for kind, index in (("W", 0), ("b", 1)):
            i = 2 * layer + index
            report.compare(f"{kind}_{layer + 1}", library_grads[i], autograd_grads[i])
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
