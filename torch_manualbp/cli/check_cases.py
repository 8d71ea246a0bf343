"""The cases `python -m torch_manualbp check` runs: every op and option, each with its native-op twin.

A case builds, on a device, in float64: the library function, its differentiable inputs (leaves that
require grad) and the same computation from native PyTorch ops. Sizes are small: the checks build full
Jacobians by finite differences.
"""
from collections import namedtuple

import torch
import torch.nn.functional as F

from ..functional import linear_sigmoid, softmax_cross_entropy

Case = namedtuple("Case", ["op", "variant", "build"])

ROWS, IN_FEATURES, OUT_FEATURES = 5, 4, 3
BATCH, CLASSES = 3, 4


def _leaves(device, *shapes, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(device).requires_grad_() for shape in shapes]


def _linear_sigmoid_case(variant, input_shape, bias_shape, seed):
    def build(device):
        shapes = [input_shape, (OUT_FEATURES, IN_FEATURES)] + ([bias_shape] if bias_shape is not None else [])
        inputs = _leaves(device, *shapes, seed=seed)
        return linear_sigmoid, inputs, lambda x, w, b=None: torch.sigmoid(F.linear(x, w) + (0 if b is None else b))

    return Case("linear_sigmoid", variant, build)


def _linear_sigmoid_strided_case():
    """A weight passed as a transposed view, and an input that is every other column of a wider tensor."""

    def build(device):
        wide_input, weight_t, bias = _leaves(device, (ROWS, 2 * IN_FEATURES), (IN_FEATURES, OUT_FEATURES), (OUT_FEATURES,), seed=7)
        return (
            lambda x, wt, b: linear_sigmoid(x[:, ::2], wt.t(), b),
            [wide_input, weight_t, bias],
            lambda x, wt, b: torch.sigmoid(F.linear(x[:, ::2], wt.t(), b)),
        )

    return Case("linear_sigmoid", "strided input, weight as w.t() view", build)


def linear_sigmoid_cases():
    return [
        _linear_sigmoid_case("no bias", (ROWS, IN_FEATURES), None, seed=1),
        _linear_sigmoid_case("bias (out,)", (ROWS, IN_FEATURES), (OUT_FEATURES,), seed=2),
        _linear_sigmoid_case("1-D input (in,), bias (out,)", (IN_FEATURES,), (OUT_FEATURES,), seed=3),
        _linear_sigmoid_case("3 leading dims (2, 3, 2, in)", (2, 3, 2, IN_FEATURES), (OUT_FEATURES,), seed=4),
        _linear_sigmoid_case("per-sample bias (N, out)", (ROWS, IN_FEATURES), (ROWS, OUT_FEATURES), seed=5),
        _linear_sigmoid_case("broadcast bias (1, 1)", (ROWS, IN_FEATURES), (1, 1), seed=6),
        _linear_sigmoid_strided_case(),
    ]


def _index_target(shape, classes, seed, ignored=None):
    """Class indices; `ignored` (an ignore_index) replaces the first one."""
    target = torch.randint(0, classes, shape, generator=torch.Generator().manual_seed(seed))
    if ignored is not None and target.numel() > 0:
        target.view(-1)[0] = ignored
    return target


def _class_weight(seed):
    return torch.rand(CLASSES, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5


def _cross_entropy_case(variant, input_shape, seed, probabilities=False, weighted=False, ignored=None, **options):
    """options: reduction, ignore_index, label_smoothing, as F.cross_entropy takes them."""

    def build(device):
        (logits,) = _leaves(device, input_shape, seed=seed)
        weight = _class_weight(seed).to(device) if weighted else None
        if probabilities:
            (target,) = _leaves(device, input_shape, seed=seed + 100)
            with torch.no_grad():
                target.copy_(target.softmax(dim=1 if len(input_shape) > 1 else 0))
            inputs = [logits, target]
        else:
            target_shape = input_shape[:1] + input_shape[2:] if len(input_shape) > 1 else ()
            target = _index_target(target_shape, input_shape[1 if len(input_shape) > 1 else 0], seed, ignored).to(device)
            inputs = [logits]

        def ours(x, t=target):
            return softmax_cross_entropy(x, t, weight=weight, **options)

        def native(x, t=target):
            return F.cross_entropy(x, t, weight=weight, **options)

        return ours, inputs, native

    return Case("softmax_cross_entropy", variant, build)


def softmax_cross_entropy_cases():
    two_d, n_d = (BATCH, CLASSES), (2, CLASSES, 3, 2)
    return [
        _cross_entropy_case("index target, mean", two_d, seed=11),
        _cross_entropy_case("index target, sum", two_d, seed=12, reduction="sum"),
        _cross_entropy_case("index target, none", two_d, seed=13, reduction="none"),
        _cross_entropy_case("index target, class weights, mean", two_d, seed=14, weighted=True),
        _cross_entropy_case("index target, class weights, none", two_d, seed=15, weighted=True, reduction="none"),
        _cross_entropy_case("index target, one ignored (-100), mean", two_d, seed=16, ignored=-100),
        _cross_entropy_case(
            "index target, ignore_index=2, weights, sum", two_d, seed=17, ignored=2, weighted=True,
            ignore_index=2, reduction="sum",
        ),
        _cross_entropy_case("index target, label_smoothing=0.1, mean", two_d, seed=18, label_smoothing=0.1),
        _cross_entropy_case(
            "index target, smoothing 0.2, weights, ignored", two_d, seed=19, weighted=True, ignored=-100,
            label_smoothing=0.2,
        ),
        _cross_entropy_case("probability target, mean", two_d, seed=20, probabilities=True),
        _cross_entropy_case("probability target, sum", two_d, seed=21, probabilities=True, reduction="sum"),
        _cross_entropy_case("probability target, none", two_d, seed=22, probabilities=True, reduction="none"),
        _cross_entropy_case(
            "probability target, weights, smoothing 0.1", two_d, seed=23, probabilities=True, weighted=True,
            label_smoothing=0.1,
        ),
        _cross_entropy_case("N-d (2, C, 3, 2) index target, weights", n_d, seed=24, weighted=True),
        _cross_entropy_case("N-d (2, C, 3, 2) index target, none", n_d, seed=25, reduction="none"),
        _cross_entropy_case("N-d (2, C, 3, 2) probability target, mean", n_d, seed=26, probabilities=True),
        _cross_entropy_case("no batch dim (C,), index target", (CLASSES,), seed=27),
        _cross_entropy_case("no batch dim (C,), probability target", (CLASSES,), seed=28, probabilities=True),
    ]


def cases():
    return linear_sigmoid_cases() + softmax_cross_entropy_cases()
