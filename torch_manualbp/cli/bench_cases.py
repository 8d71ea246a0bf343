"""What the benchmarks measure: per layer, the shapes, the inputs, the contenders and the work done.

A case is one layer at one shape and dtype. Its contenders all compute the same thing from the same
inputs: torch_manualbp, native eager PyTorch, torch.compile of the native composition, and for
LinearSigmoid the "GEMM floor" (the bare GEMMs the layer cannot avoid, no autograd). Each contender
gives a forward closure (inputs that require grad, as in training: the graph and what it saves are
built) and a forward + backward closure (torch.autograd.grad of the output, so that nothing
accumulates into .grad between runs).
"""
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import torch_manualbp

OURS = "torch_manualbp"
EAGER = "eager"
COMPILED = "compiled"
FLOOR = "gemm floor"
TORCH_CHUNKED = "torch chunked"  # F.linear_cross_entropy with options=nn.LinearCrossEntropyOptions()
OURS_HALF_IGNORED = "torch_manualbp, half ignored"  # every other target is ignore_index
OURS_NO_GRAD = "torch_manualbp, no_grad"  # the forward under torch.no_grad: loss only

FWD = "fwd"
FWD_BWD = "fwd+bwd"
PASSES = (FWD, FWD_BWD)


@dataclasses.dataclass
class Contender:
    name: str
    fwd: Optional[Callable[[], object]]  # None: not available (see `missing`)
    fwd_bwd: Optional[Callable[[], object]]
    missing: Optional[str] = None  # why it is not available, e.g. "torch.compile failed: ..."
    # The forward whose saved tensors are counted (None: not an autograd contender, e.g. the floor).
    forward_for_saved: Optional[Callable[[], object]] = None


@dataclasses.dataclass
class Case:
    layer: str
    shape: Tuple[int, ...]
    label: str  # e.g. "4096x1024->1024"
    dtype: torch.dtype
    # What one run moves or computes, per pass: ("GFLOP/s", flops) or ("GB/s", bytes).
    work_unit: str
    work: Dict[str, float]
    # Bytes of the tensor the memory figures are compared with (LinearSigmoid: the output; CE: the logits).
    reference_bytes: int
    reference_name: str
    # Builds the inputs and the contenders (called once per process: the memory probes rebuild them).
    build: Callable[["Case", bool], Tuple[List[torch.Tensor], List[Contender]]]

    @property
    def key(self):
        return f"{self.layer} {self.label} {dtype_name(self.dtype)}"


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _compiled(fn):
    """torch.compile of fn, or the reason it cannot be used (compilation happens lazily, on first call)."""
    try:
        return torch.compile(fn, dynamic=False), None
    except Exception as error:  # noqa: BLE001  (any failure: reported, not raised)
        return None, f"torch.compile unavailable: {type(error).__name__}: {str(error).splitlines()[0][:160]}"


def _grad_closure(forward, wrt, grad_output):
    def fwd_bwd():
        return torch.autograd.grad(forward(), wrt, grad_output)

    return fwd_bwd


def _compiled_contender(native, inputs, wrt, grad_output):
    """The COMPILED contender: torch.compile of the native composition on `inputs`, or why it is missing."""
    compiled, why = _compiled(native)
    if compiled is None:
        return Contender(COMPILED, None, None, why)
    forward = lambda: compiled(*inputs)  # noqa: E731
    return Contender(COMPILED, forward, _grad_closure(forward, wrt, grad_output), None, forward)


# ---- LinearSigmoid ------------------------------------------------------------------------------------

LINEAR_SIGMOID_SHAPES = [(64, 256, 256), (4096, 1024, 1024)]  # (rows, in_features, out_features)


def _native_linear_sigmoid(x, weight, bias):
    return torch.sigmoid(F.linear(x, weight, bias))


def _build_linear_sigmoid(case, with_compile):
    rows, in_features, out_features = case.shape
    generator = torch.Generator().manual_seed(0)
    options = dict(dtype=case.dtype)
    x = torch.randn(rows, in_features, generator=generator, **options).requires_grad_()
    bound = 1.0 / math.sqrt(in_features)  # nn.Linear's init range
    weight = (torch.rand(out_features, in_features, generator=generator, **options) * 2 - 1).mul_(bound)
    bias = (torch.rand(out_features, generator=generator, **options) * 2 - 1).mul_(bound)
    weight.requires_grad_()
    bias.requires_grad_()
    grad_output = torch.randn(rows, out_features, generator=generator, **options)
    wrt = (x, weight, bias)

    contenders = []
    for name, fn in ((OURS, torch_manualbp.functional.linear_sigmoid), (EAGER, _native_linear_sigmoid)):
        forward = lambda fn=fn: fn(x, weight, bias)  # noqa: E731
        contenders.append(Contender(name, forward, _grad_closure(forward, wrt, grad_output), None, forward))
    if with_compile:
        contenders.append(_compiled_contender(_native_linear_sigmoid, (x, weight, bias), wrt, grad_output))

    # The floor: the GEMMs themselves. Forward: z = x @ W^T. Forward + backward: also dx = dz @ W and
    # dW = dz^T @ x (dz has the output's shape; grad_output stands in for it).
    x_plain, weight_plain = x.detach(), weight.detach()

    def floor_fwd():
        return torch.mm(x_plain, weight_plain.t())

    def floor_fwd_bwd():
        return (
            torch.mm(x_plain, weight_plain.t()),
            torch.mm(grad_output, weight_plain),
            torch.mm(grad_output.t(), x_plain),
        )

    contenders.append(Contender(FLOOR, floor_fwd, floor_fwd_bwd))
    return [x, weight, bias, grad_output], contenders


def linear_sigmoid_cases(dtype, shapes=LINEAR_SIGMOID_SHAPES):
    cases = []
    for rows, in_features, out_features in shapes:
        gemm_flops = 2.0 * rows * in_features * out_features
        cases.append(
            Case(
                layer="linear_sigmoid",
                shape=(rows, in_features, out_features),
                label=f"{rows}x{in_features}->{out_features}",
                dtype=dtype,
                work_unit="GFLOP/s",
                work={FWD: gemm_flops, FWD_BWD: 3 * gemm_flops},
                reference_bytes=rows * out_features * dtype.itemsize,
                reference_name="output",
                build=_build_linear_sigmoid,
            )
        )
    return cases


# ---- softmax cross-entropy ----------------------------------------------------------------------------

# (positions, classes) or (N, C, H, W): the class dim is 1, as in F.cross_entropy.
CROSS_ENTROPY_SHAPES = [(8192, 1000), (4096, 32768), (8, 21, 128, 128)]


def _native_cross_entropy(logits, target):
    return F.cross_entropy(logits, target)


def _build_cross_entropy(case, with_compile):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(case.shape, generator=generator, dtype=case.dtype).requires_grad_()
    classes = case.shape[1]
    target_shape = (case.shape[0],) + tuple(case.shape[2:])
    target = torch.randint(0, classes, target_shape, generator=generator)
    wrt = (logits,)

    contenders = []
    for name, fn in ((OURS, torch_manualbp.functional.softmax_cross_entropy), (EAGER, _native_cross_entropy)):
        forward = lambda fn=fn: fn(logits, target)  # noqa: E731
        contenders.append(Contender(name, forward, _grad_closure(forward, wrt, None), None, forward))
    if with_compile:
        contenders.append(_compiled_contender(_native_cross_entropy, (logits, target), wrt, None))
    order = {OURS: 0, EAGER: 1, COMPILED: 2}
    contenders.sort(key=lambda c: order[c.name])
    return [logits, target], contenders


def cross_entropy_cases(dtype, shapes=CROSS_ENTROPY_SHAPES):
    cases = []
    for shape in shapes:
        logits_bytes = math.prod(shape) * dtype.itemsize
        label = "x".join(str(s) for s in shape)
        cases.append(
            Case(
                layer="softmax_cross_entropy",
                shape=tuple(shape),
                label=label,
                dtype=dtype,
                work_unit="GB/s",
                # The least traffic there is: forward reads the logits once; forward + backward also
                # writes their gradient once.
                work={FWD: logits_bytes, FWD_BWD: 2 * logits_bytes},
                reference_bytes=logits_bytes,
                reference_name="logits",
                build=_build_cross_entropy,
            )
        )
    return cases


# ---- linear cross-entropy ---------------------------------------------------------------------------------

# (tokens, in_features, classes): a classifier-sized head, and a language model's (Llama 3's vocabulary).
LINEAR_CROSS_ENTROPY_SHAPES = [(2048, 512, 32768), (4096, 1024, 128256)]


def _native_linear_cross_entropy(x, weight, target):
    return F.cross_entropy(F.linear(x, weight), target)


def _torch_chunked(x, weight, target):
    return F.linear_cross_entropy(x, weight, target, options=torch.nn.LinearCrossEntropyOptions())


def _build_linear_cross_entropy(case, with_compile):
    tokens, in_features, classes = case.shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, in_features, generator=generator, dtype=case.dtype).requires_grad_()
    weight = (torch.randn(classes, in_features, generator=generator) / math.sqrt(in_features)).to(case.dtype)
    weight.requires_grad_()
    target = torch.randint(0, classes, (tokens,), generator=generator)
    half_ignored = target.clone()
    half_ignored[::2] = -100
    wrt = (x, weight)
    ours = torch_manualbp.functional.linear_cross_entropy

    contenders = []
    for name, fn, t in ((OURS, ours, target), (EAGER, _native_linear_cross_entropy, target),
                        (OURS_HALF_IGNORED, ours, half_ignored)):
        forward = lambda fn=fn, t=t: fn(x, weight, t)  # noqa: E731
        contenders.append(Contender(name, forward, _grad_closure(forward, wrt, None), None, forward))

    def no_grad_forward():
        with torch.no_grad():
            return ours(x, weight, target)

    contenders.append(Contender(OURS_NO_GRAD, no_grad_forward, None))
    if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        forward = lambda: _torch_chunked(x, weight, target)  # noqa: E731
        contenders.append(Contender(TORCH_CHUNKED, forward, _grad_closure(forward, wrt, None), None, forward))
    else:
        contenders.append(Contender(TORCH_CHUNKED, None, None, f"torch {torch.__version__} has no F.linear_cross_entropy"))
    if with_compile:
        contenders.append(_compiled_contender(_native_linear_cross_entropy, (x, weight, target), wrt, None))

    # The floor: the three GEMMs of any forward + backward, logits = x W^T, dX = G W, dW = G^T x, on
    # stand-ins of the logits' gradient G; forward: the first alone.
    x_plain, weight_plain = x.detach(), weight.detach()
    grad_logits = torch.randn(tokens, classes, generator=generator).to(case.dtype)

    def floor_fwd():
        return torch.mm(x_plain, weight_plain.t())

    def floor_fwd_bwd():
        return torch.mm(x_plain, weight_plain.t()), torch.mm(grad_logits, weight_plain), torch.mm(grad_logits.t(), x_plain)

    contenders.append(Contender(FLOOR, floor_fwd, floor_fwd_bwd))
    order = {OURS: 0, OURS_HALF_IGNORED: 1, OURS_NO_GRAD: 2, EAGER: 3, COMPILED: 4, TORCH_CHUNKED: 5, FLOOR: 6}
    contenders.sort(key=lambda c: order[c.name])
    return [x, weight, target, half_ignored, grad_logits], contenders


def linear_cross_entropy_cases(dtype, shapes=LINEAR_CROSS_ENTROPY_SHAPES):
    cases = []
    for tokens, in_features, classes in shapes:
        gemm_flops = 2.0 * tokens * in_features * classes
        cases.append(
            Case(
                layer="linear_cross_entropy",
                shape=(tokens, in_features, classes),
                label=f"{tokens}x{in_features}->{classes}",
                dtype=dtype,
                work_unit="GFLOP/s",
                work={FWD: gemm_flops, FWD_BWD: 3 * gemm_flops},
                # The memory figures are compared with the float32 logits, whatever the dtype.
                reference_bytes=tokens * classes * 4,
                reference_name="float32 logits",
                build=_build_linear_cross_entropy,
            )
        )
    return cases


LAYERS = {
    "linear_sigmoid": linear_sigmoid_cases,
    "softmax_cross_entropy": cross_entropy_cases,
    "linear_cross_entropy": linear_cross_entropy_cases,
}
QUICK_SHAPES = {
    "linear_sigmoid": [(64, 256, 256)],
    "softmax_cross_entropy": [(8192, 1000), (8, 21, 32, 32)],
    "linear_cross_entropy": [(256, 64, 4096)],
}


def find_case(layer, shape, dtype):
    return LAYERS[layer](dtype, [tuple(shape)])[0]
