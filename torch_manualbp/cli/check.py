"""`python -m torch_manualbp check`: verify this install's ops on a device, in float64.

For every op and option (torch_manualbp/cli/check_cases.py) three checks, one table row each:
  forward        the op's value against the same computation from native PyTorch ops
  gradcheck      the hand-written backward against finite differences
  gradgradcheck  the backward's own derivative (double backward), likewise
Each gradient check is judged twice and passes only if both agree:
  * by torch.autograd.gradcheck / gradgradcheck in fast mode (a random projection u^T J v of the Jacobian);
  * by the full Jacobian, measured here: every entry of the analytical Jacobian, from
    torch.autograd.functional.jacobian (the library's backward, one vector-Jacobian product per output
    element), against central differences, within gradcheck's own bound |a - n| <= atol + rtol |n|.
    "largest error" is the largest |a - n| of that comparison. For gradgradcheck the function
    differentiated is the vector-Jacobian product (inputs, grad_outputs) -> gradients itself.
"""
import math
import sys

import torch

from .check_cases import cases
from .tolerances import agrees, allowed_difference, max_abs_difference

# torch.autograd.gradcheck's own defaults; the independent measurement is judged by the same bound.
GRADCHECK_ATOL = 1e-5
GRADCHECK_RTOL = 1e-3
FINITE_DIFFERENCE_STEP = 1e-6
COLUMNS = [("op", 22), ("variant", 46), ("check", 14), ("device", 7), ("dtype", 8), ("result", 7), ("largest error", 13)]


def add_arguments(parser):
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--op", action="append", choices=sorted({case.op for case in cases()}),
        help="check only this op (repeatable; default: every op)",
    )


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


def _detached_copies(inputs):
    return [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]


def numerical_jacobian(fn, inputs, step=FINITE_DIFFERENCE_STEP):
    """blocks[i][j]: (outputs[i].numel(), inputs[j].numel()), by central differences."""
    outputs = _as_tuple(fn(*inputs))
    blocks = [[torch.zeros(o.numel(), t.numel(), dtype=o.dtype, device=o.device) for t in inputs] for o in outputs]
    for j, t in enumerate(inputs):
        for k in range(t.numel()):
            shifted = []
            for sign in (1.0, -1.0):
                copies = _detached_copies(inputs)
                with torch.no_grad():
                    copies[j].view(-1)[k] += sign * step
                shifted.append([o.detach().reshape(-1) for o in _as_tuple(fn(*copies))])
            for i in range(len(outputs)):
                blocks[i][j][:, k] = (shifted[0][i] - shifted[1][i]) / (2 * step)
    return blocks


def analytical_jacobian(fn, inputs):
    """blocks[i][j]: (outputs[i].numel(), inputs[j].numel()), from the library's backward."""
    returned = fn(*inputs)
    outputs = _as_tuple(returned)
    jacobian = torch.autograd.functional.jacobian(fn, tuple(_detached_copies(inputs)))
    if not isinstance(returned, tuple):
        jacobian = (jacobian,)
    return [
        [jacobian[i][j].reshape(o.numel(), t.numel()) for j, t in enumerate(inputs)] for i, o in enumerate(outputs)
    ]


def jacobian_error(fn, inputs):
    """(largest |analytical - numerical| over the Jacobian, whether every entry is within gradcheck's bound)."""
    largest, within = 0.0, True
    for analytical_row, numerical_row in zip(analytical_jacobian(fn, inputs), numerical_jacobian(fn, inputs)):
        for analytical, numerical in zip(analytical_row, numerical_row):
            if analytical.numel() == 0:
                continue
            error = (analytical - numerical).abs()
            worst = error.max().item()
            largest = worst if math.isnan(worst) or worst > largest else largest  # a NaN stays visible
            within = within and bool((error <= GRADCHECK_ATOL + GRADCHECK_RTOL * numerical.abs()).all())
    return largest, within


def vector_jacobian_product(fn, inputs, grad_outputs):
    """The function whose Jacobian gradgradcheck checks: (inputs, grad_outputs) -> gradients of fn."""
    count = len(inputs)

    def first_derivative(*args):
        inputs_, grad_outputs_ = args[:count], args[count:]
        outputs = _as_tuple(fn(*inputs_))
        grads = torch.autograd.grad(outputs, inputs_, grad_outputs_, create_graph=True, allow_unused=True)
        return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs_))

    return first_derivative, list(inputs) + list(grad_outputs)


def check_case(case, device):
    """The three (check, passed, largest error) results of one case."""
    fn, inputs, native = case.build(device)
    ours, reference = fn(*inputs), native(*inputs)
    difference = max_abs_difference(ours, reference)
    results = [("forward", agrees(difference, allowed_difference(reference.detach())), difference)]

    passed = torch.autograd.gradcheck(fn, tuple(inputs), fast_mode=True, raise_exception=False)
    largest, within = jacobian_error(fn, inputs)
    results.append(("gradcheck", passed and within, largest))

    passed = torch.autograd.gradgradcheck(fn, tuple(inputs), fast_mode=True, raise_exception=False)
    grad_outputs = [torch.randn_like(o).requires_grad_() for o in _as_tuple(ours)]
    first_derivative, all_inputs = vector_jacobian_product(fn, inputs, grad_outputs)
    largest, within = jacobian_error(first_derivative, all_inputs)
    results.append(("gradgradcheck", passed and within, largest))
    return results


def _row(values):
    return "  ".join(f"{value:<{width}}" for value, (_, width) in zip(values, COLUMNS)).rstrip()


def run(args):
    out = sys.stdout
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        out.write("check: --device cuda, but torch sees no CUDA device here\n")
        return 2
    device = torch.device(args.device)
    torch.manual_seed(0)  # gradgradcheck's random grad_outputs
    selected = [case for case in cases() if args.op is None or case.op in args.op]
    out.write(_row([name for name, _ in COLUMNS]) + "\n")
    out.write(_row(["-" * width for _, width in COLUMNS]) + "\n")
    failures = checks = 0
    for case in selected:
        try:
            results = check_case(case, device)
        except Exception as error:  # an op that raises is a failed check, reported, not a crash
            out.write(_row([case.op, case.variant, "all", device.type, "float64", "ERROR", "-"]) + "\n")
            out.write(f"    {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}\n")
            failures += 1
            checks += 1
            continue
        for check, passed, largest in results:
            checks += 1
            failures += not passed
            verdict = "pass" if passed else "FAIL"
            out.write(_row([case.op, case.variant, check, device.type, "float64", verdict, f"{largest:.2e}"]) + "\n")
        out.flush()
    if failures:
        out.write(f"\ncheck: {failures} of {checks} checks FAILED\n")
    else:
        out.write(f"\ncheck: all {checks} checks passed\n")
    return 1 if failures else 0
