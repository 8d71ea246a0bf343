"""The cases `python -m torch_manualbp check` runs: every op and option, each with its native-op twin.

A case builds, on a device, in float64: the library function, its differentiable inputs (leaves that
require grad) and the same computation from native PyTorch ops. Sizes are small: the checks build full
Jacobians by finite differences.
"""
from collections import namedtuple

import torch
import torch.nn.functional as F

from ..functional import linear_cross_entropy, linear_sigmoid, softmax_cross_entropy

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


TOKENS, HEAD_CLASSES = 5, 6
# One token per chunk: the chunk loop, the cross-chunk accumulation of the weight gradient.
ONE_TOKEN_CHUNKS = 1


def _native_linear_cross_entropy(x, w, t, b=None, weight=None, lse_square_scale=0.0, softcap=None, **options):
    """F.linear, the softcap, F.cross_entropy, and the z-loss (per non-ignored token, 'mean' over their count)."""
    logits = F.linear(x, w, b)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    loss = F.cross_entropy(logits, t, weight=weight, **options)
    if lse_square_scale:
        kept = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if t.is_floating_point() else t != -100
        z_loss = lse_square_scale * torch.logsumexp(logits, -1).square() * kept
        reduction = options.get("reduction", "mean")
        loss = loss + (z_loss if reduction == "none" else z_loss.sum() / (kept.sum() if reduction == "mean" else 1))
    return loss


def _linear_cross_entropy_case(variant, seed, bias=False, probabilities=False, weighted=False, ignored=None, **options):
    """options: reduction, label_smoothing, lse_square_scale, softcap."""

    def build(device):
        shapes = [(TOKENS, IN_FEATURES), (HEAD_CLASSES, IN_FEATURES)] + ([(HEAD_CLASSES,)] if bias else [])
        inputs = _leaves(device, *shapes, seed=seed)
        generator = torch.Generator().manual_seed(seed + 100)
        weight = (torch.rand(HEAD_CLASSES, generator=generator, dtype=torch.float64) + 0.5).to(device) if weighted else None
        if probabilities:
            target = torch.rand(TOKENS, HEAD_CLASSES, generator=generator, dtype=torch.float64).softmax(1).to(device)
            inputs.append(target.requires_grad_())
        else:
            target = _index_target((TOKENS,), HEAD_CLASSES, seed, ignored).to(device)

        def unpack(args):
            x, w, *rest = args
            b = rest.pop(0) if bias else None
            t = rest.pop(0) if probabilities else target
            return x, w, t, b

        def ours(*args):
            x, w, t, b = unpack(args)
            return linear_cross_entropy(x, w, t, linear_bias=b, weight=weight, chunk_budget=ONE_TOKEN_CHUNKS, **options)

        def native(*args):
            x, w, t, b = unpack(args)
            return _native_linear_cross_entropy(x, w, t, b, weight=weight, **options)

        return ours, inputs, native

    return Case("linear_cross_entropy", variant, build)


def linear_cross_entropy_cases():
    return [
        _linear_cross_entropy_case("index target, mean", seed=31),
        _linear_cross_entropy_case("index target, bias, sum", seed=32, bias=True, reduction="sum"),
        _linear_cross_entropy_case("index target, bias, none", seed=33, bias=True, reduction="none"),
        _linear_cross_entropy_case(
            "index target, weights, ignored, smoothing 0.1", seed=34, weighted=True, ignored=-100, label_smoothing=0.1
        ),
        _linear_cross_entropy_case("softcap 2.0, z-loss 0.1, mean", seed=35, bias=True, softcap=2.0, lse_square_scale=0.1),
        _linear_cross_entropy_case("softcap 3.0, z-loss 0.05, none", seed=36, softcap=3.0, lse_square_scale=0.05, reduction="none"),
        _linear_cross_entropy_case("probability target, mean", seed=37, probabilities=True),
        _linear_cross_entropy_case(
            "probability, bias, weights, smoothing 0.2, none", seed=38, probabilities=True, bias=True,
            weighted=True, label_smoothing=0.2, reduction="none",
        ),
    ]


def cases():
    return linear_sigmoid_cases() + softmax_cross_entropy_cases() + linear_cross_entropy_cases()
