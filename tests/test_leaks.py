"""Leaks: thousands of forward + backward iterations keep the resident memory flat, nothing that a call
creates (outputs, saved tensors, graph) outlives its last reference without the garbage collector, and a
backward allocates no buffer beyond the gradients it returns.

Not run under `make sanitize`: ASan keeps freed memory in quarantine, so resident memory grows there
without a leak (and LeakSanitizer is off: CPython itself leaks at exit).
"""
import gc
import weakref

import pytest
import torch

from torch_manualbp.functional import linear_sigmoid, softmax_cross_entropy

ITERATIONS = 3000
WARMUP = 300
# A leaked (64, 128) float32 tensor (LinearSigmoid's output, CrossEntropy's grad_input) per iteration
# alone would be 3000 * 32 KiB = 94 MiB.
ALLOWED_GROWTH_MIB = 24


def _rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _linear_sigmoid_step(x, weight, bias, grad_output, create_graph):
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    y = linear_sigmoid(*leaves)
    grads = torch.autograd.grad(y, leaves, grad_output, create_graph=create_graph)
    if create_graph:
        torch.autograd.grad(sum(g.sum() for g in grads), leaves)


def _linear_sigmoid_steps():
    """One iteration for each path: fused row bias, per-sample bias, strided and zero-stride grad_output,
    1-D input, double backward, bfloat16."""
    x, weight = torch.randn(64, 32), torch.randn(128, 32)
    row_bias, full_bias = torch.randn(128), torch.randn(64, 128)
    grad_output = torch.randn(128, 64).t()
    ones = torch.ones(1, 1).expand(64, 128)
    return [
        lambda: _linear_sigmoid_step(x, weight, row_bias, grad_output, False),
        lambda: _linear_sigmoid_step(x, weight, full_bias, ones, False),
        lambda: _linear_sigmoid_step(x[0], weight, row_bias, grad_output[0], False),
        lambda: _linear_sigmoid_step(x[:8], weight, row_bias, grad_output[:8], True),
        lambda: _linear_sigmoid_step(x.bfloat16(), weight.bfloat16(), row_bias.bfloat16(), ones.bfloat16(), False),
    ]


def _cross_entropy_step(x, target, create_graph, **options):
    leaves = [x.detach().requires_grad_(), target.detach().requires_grad_(target.is_floating_point())]
    loss = softmax_cross_entropy(*leaves, **options)
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(loss, wrt, torch.ones_like(loss), create_graph=create_graph)
    if create_graph:
        torch.autograd.grad(sum(g.sum() for g in grads), wrt)


def _cross_entropy_steps():
    """One iteration for each path: index and probability targets, rows and spatial layouts, weights,
    smoothing, ignore_index, every reduction, double backward, bfloat16."""
    x, spatial = torch.randn(64, 128), torch.randn(4, 128, 16)
    index = torch.randint(0, 128, (64,)).index_fill(0, torch.tensor([3, 9]), -100)
    probabilities = torch.rand(64, 128)
    weight = torch.rand(128) + 0.1
    return [
        lambda: _cross_entropy_step(x, index, False),
        lambda: _cross_entropy_step(x, index, False, weight=weight, label_smoothing=0.1, reduction="sum"),
        lambda: _cross_entropy_step(x, probabilities, False, reduction="none"),
        lambda: _cross_entropy_step(spatial, torch.randint(0, 128, (4, 16)), False, weight=weight),
        lambda: _cross_entropy_step(x[:8], probabilities[:8], True, weight=weight, label_smoothing=0.2),
        lambda: _cross_entropy_step(x.bfloat16(), index, False, label_smoothing=0.1),
    ]


@pytest.fixture
def one_intra_op_thread():
    # One thread: malloc's per-thread arenas would add noise to the resident size, and a leak does not
    # depend on the thread count (test_threads.py runs the parallel paths).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("steps", [_linear_sigmoid_steps, _cross_entropy_steps], ids=["linear_sigmoid", "cross_entropy"])
def test_resident_memory_stays_flat(steps, one_intra_op_thread):
    step_list = steps()
    for i in range(WARMUP):
        step_list[i % len(step_list)]()
    gc.collect()
    before = _rss_mib()
    for i in range(ITERATIONS):
        step_list[i % len(step_list)]()
    gc.collect()
    growth = _rss_mib() - before
    assert growth < ALLOWED_GROWTH_MIB, f"resident memory grew by {growth:.1f} MiB over {ITERATIONS} iterations"


def _linear_sigmoid_graph():
    x = torch.randn(16, 8, requires_grad=True)
    weight = torch.randn(4, 8, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    y = linear_sigmoid(x, weight, bias)
    return y, [x, weight, bias]


def _cross_entropy_graph():
    x = torch.randn(16, 8, requires_grad=True)
    target = torch.rand(16, 8, requires_grad=True)
    loss = softmax_cross_entropy(x, target, weight=torch.rand(8), label_smoothing=0.1)
    return loss, [x, target]


@pytest.mark.parametrize("make_graph", [_linear_sigmoid_graph, _cross_entropy_graph], ids=["linear_sigmoid", "cross_entropy"])
@pytest.mark.parametrize("backward", ["none", "backward", "double_backward"])
def test_outputs_and_saved_tensors_die_with_their_last_reference(make_graph, backward):
    # With the garbage collector off, only reference counting frees: a reference cycle through the
    # autograd context (e.g. the output stored on ctx) would keep these alive.
    gc.collect()
    gc.disable()
    try:
        y, leaves = make_graph()
        alive = [weakref.ref(t) for t in (y, *leaves)] + [weakref.ref(y.grad_fn)]
        if backward == "backward":
            y.sum().backward()
        elif backward == "double_backward":
            grads = torch.autograd.grad(y.sum(), leaves, create_graph=True)
            sum(g.sum() for g in grads).backward()
            del grads
        del y, leaves
        assert all(ref() is None for ref in alive), "a tensor or graph node outlived its last reference"
    finally:
        gc.enable()


def _peak_mib_of(fn):
    """Resident memory peak while fn() runs, above the resident size before it (Linux: VmHWM reset)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current VmRSS
    before = _rss_mib()
    result = fn()
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    return peak - before, result


def test_cross_entropy_backward_allocates_only_its_gradient(one_intra_op_thread):
    x = torch.randn(2, 4, 2**24).bfloat16().requires_grad_()  # 256 MiB; max_logit, log_sum: 2 * 2**24 float32 = 128 MiB each
    target = torch.randint(0, 4, (2, 2**24), dtype=torch.uint8)
    loss = softmax_cross_entropy(x, target, reduction="sum")
    peak, (grad,) = _peak_mib_of(lambda: torch.autograd.grad(loss, [x]))
    grad_mib = grad.numel() * grad.element_size() / 2**20
    assert peak < grad_mib + 32, f"backward peaked {peak:.0f} MiB above its start for a {grad_mib:.0f} MiB gradient"
