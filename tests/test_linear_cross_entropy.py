"""LinearCrossEntropy against the composite F.cross_entropy(F.linear(...)) (values, gradients, errors), with the
softcap and z-loss terms written out here, gradcheck / gradgradcheck in float64, chunking, memory."""
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from torch_manualbp import LinearCrossEntropyFunction
from torch_manualbp.functional import linear_cross_entropy

ops = torch.ops.torch_manualbp
REDUCTIONS = ["none", "mean", "sum"]
TINY_BUDGET = 1  # bytes: one token per chunk


def reference(input, linear_weight, target, linear_bias=None, weight=None, reduction="mean", ignore_index=-100,
              label_smoothing=0.0, lse_square_scale=0.0, softcap=None):
    """The unfused composite, in the dtype of its arguments: F.linear, the softcap, F.cross_entropy, the z-loss
    lse_square_scale * logsumexp^2 per non-ignored token ('mean': over their number)."""
    classes = linear_weight.shape[0]
    logits = F.linear(input, linear_weight, linear_bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    probability = target.shape == logits.shape
    flat_logits = logits.reshape(-1, classes)
    flat_target = target.reshape(-1, classes) if probability else target.reshape(-1).long()
    loss = F.cross_entropy(flat_logits, flat_target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if reduction == "none":
        loss = loss.reshape(logits.shape[:-1])
    if lse_square_scale:
        kept = torch.ones(flat_logits.shape[0], dtype=torch.bool) if probability else flat_target != ignore_index
        z_loss = lse_square_scale * torch.logsumexp(flat_logits, -1).square() * kept
        if reduction == "none":
            loss = loss + z_loss.reshape(loss.shape)
        elif reduction == "sum":
            loss = loss + z_loss.sum()
        else:
            loss = loss + z_loss.sum() / kept.sum()
    return loss


def make_case(token_shape, in_features, classes, kind="index", dtype=torch.float64, bias=False, weighted=False,
              ignored=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*token_shape, in_features, dtype=dtype, generator=g)
    w = torch.randn(classes, in_features, dtype=dtype, generator=g) / in_features**0.5 * 2
    b = torch.randn(classes, dtype=dtype, generator=g) if bias else None
    if kind == "index":
        t = torch.randint(0, classes, token_shape, generator=g)
        if ignored and t.numel() > 1:
            t.view(-1)[1::3] = -100
    else:
        t = torch.rand(*token_shape, classes, dtype=dtype, generator=g)
    weight = torch.rand(classes, dtype=dtype, generator=g) + 0.2 if weighted else None
    return x, w, b, t, weight


def loss_and_grads(fn, x, w, b, t, grad_output=None, **kwargs):
    """fn's loss and the gradients of every differentiable tensor for grad_output (a fixed pattern)."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_(t.is_floating_point())
    loss = fn(x, w, t, linear_bias=b, **kwargs)
    if grad_output is None:
        grad_output = torch.linspace(-1, 2, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    inputs = [v for v in (x, w, b, t) if v is not None and v.requires_grad]
    return (loss.detach(),) + torch.autograd.grad(loss, inputs, grad_output)


def assert_matches_reference(x, w, b, t, atol=1e-10, rtol=1e-9, **kwargs):
    ours = loss_and_grads(linear_cross_entropy, x, w, b, t, **kwargs)
    ref = loss_and_grads(reference, x, w, b, t, **kwargs)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, atol=atol, rtol=rtol, equal_nan=True)


# ---- values and gradients over the option grid (float64) -------------------------------------------
GRID = list(itertools.product(REDUCTIONS, [0.0, 0.2], [False, True], [None, 2.5], [0.0, 0.05]))


@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction,smoothing,weighted,softcap,z_loss", GRID)
def test_matches_composite_over_option_grid(kind, bias, reduction, smoothing, weighted, softcap, z_loss):
    x, w, b, t, weight = make_case((9,), 7, 13, kind, bias=bias, weighted=weighted)
    for budget in (None, TINY_BUDGET):
        kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, softcap=softcap,
                      lse_square_scale=z_loss)
        ours = loss_and_grads(linear_cross_entropy, x, w, b, t, chunk_budget=budget, **kwargs)
        ref = loss_and_grads(reference, x, w, b, t, **kwargs)
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("token_shape", [(), (5,), (2, 3), (2, 1, 3)], ids=str)
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_any_number_of_leading_dims(token_shape, kind):
    x, w, b, t, weight = make_case(token_shape, 4, 6, kind, bias=True, weighted=True)
    for reduction in REDUCTIONS:
        assert_matches_reference(x, w, b, t, weight=weight, reduction=reduction, label_smoothing=0.1)


@pytest.mark.parametrize("classes", [1, 2, 15, 16, 17, 1023, 1025, 2049, 20011])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_class_counts_that_leave_partial_vectors_and_blocks(classes, dtype):
    x, w, b, t, weight = make_case((37,), 24, classes, dtype=dtype, bias=True, weighted=True)
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-5)
    assert_matches_reference(x, w, b, t, weight=weight, label_smoothing=0.1, **tol)
    p = torch.rand(37, classes, dtype=dtype)
    assert_matches_reference(x, w, b, p, lse_square_scale=0.01, softcap=4.0, **tol)


def test_tiny_budget_gives_the_same_answers_as_one_chunk():
    x, w, b, t, weight = make_case((101,), 16, 300, bias=True, weighted=True)
    for reduction in REDUCTIONS:
        one = loss_and_grads(linear_cross_entropy, x, w, b, t, weight=weight, reduction=reduction,
                             label_smoothing=0.1, chunk_budget=1 << 30)
        for budget in (TINY_BUDGET, 300 * 8 * 7):  # one token, 7 tokens per chunk
            many = loss_and_grads(linear_cross_entropy, x, w, b, t, weight=weight, reduction=reduction,
                                  label_smoothing=0.1, chunk_budget=budget)
            for a, r in zip(many, one):
                torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-11)


def test_non_contiguous_inputs_and_weights():
    x, w, b, t, weight = make_case((6, 5), 8, 11, bias=True, weighted=True)
    x_t = x.transpose(0, 1).contiguous().transpose(0, 1)  # (6, 5, 8), non-contiguous
    w_t = w.t().contiguous().t()
    assert not x_t.is_contiguous() and not w_t.is_contiguous()
    assert_matches_reference(x_t, w_t, b, t, weight=weight)
    p = torch.rand(6, 11, 5, dtype=torch.float64).transpose(1, 2)
    assert_matches_reference(x_t, w_t, b, p, reduction="none")


def test_uint8_targets_and_ignore_index_inside_the_class_range():
    x, w, b, t, _ = make_case((20,), 5, 9)
    t = torch.randint(0, 9, (20,), dtype=torch.uint8)
    assert_matches_reference(x, w, b, t, ignore_index=3)
    assert_matches_reference(x, w, b, t, reduction="none", ignore_index=3)


def test_all_ignored_mean_is_nan_sum_is_zero():
    x, w, b, t, _ = make_case((4,), 3, 5)
    t.fill_(-100)
    for reduction, expected in (("mean", float("nan")), ("sum", 0.0)):
        ours = loss_and_grads(linear_cross_entropy, x, w, b, t, reduction=reduction)
        ref = loss_and_grads(reference, x, w, b, t, reduction=reduction)
        torch.testing.assert_close(ours[0], torch.tensor(expected, dtype=torch.float64), equal_nan=True)
        for a, r in zip(ours[1:], ref[1:]):
            torch.testing.assert_close(a, r, equal_nan=True)


def test_empty_token_batch():
    x, w, b, t, _ = make_case((0,), 3, 5)
    for reduction in REDUCTIONS:
        assert_matches_reference(x, w, b, t, reduction=reduction)


def test_nan_and_infinite_logits_propagate_as_in_torch():
    x, w, b, t, _ = make_case((5,), 3, 4, bias=True, ignored=False)
    b = b.clone()
    b[2] = float("inf")
    assert_matches_reference(x, w, b, t, reduction="none")
    x = x.clone()
    x[1, 0] = float("nan")
    assert_matches_reference(x, w, None, t, reduction="none")


def test_large_logit_offsets_keep_full_precision():
    # The row's max is subtracted before the exponentials: an offset of 1e4 on every logit leaves the
    # softmax, and so the gradients, as precise as at 0 (the loss itself keeps float64's precision of lse).
    x, w, b, t, _ = make_case((8,), 6, 50, bias=True, ignored=False)
    shifted = b + 1e4
    ours = loss_and_grads(linear_cross_entropy, x, w, shifted, t)
    ref = loss_and_grads(linear_cross_entropy, x, w, b, t)
    for a, r in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-9)


# ---- gradcheck / gradgradcheck (float64) ------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("options", [{}, dict(label_smoothing=0.2, softcap=3.0, lse_square_scale=0.1)], ids=["plain", "all"])
def test_gradcheck_and_gradgradcheck(reduction, kind, options):
    x, w, b, t, weight = make_case((2, 3), 4, 5, kind, bias=True, weighted=True)
    differentiable = [x.requires_grad_(), w.requires_grad_(), b.requires_grad_()]
    if kind == "probability":
        differentiable.append(t.requires_grad_())

    def fn(x, w, b, *rest):
        target = rest[0] if rest else t
        return linear_cross_entropy(x, w, target, linear_bias=b, weight=weight, reduction=reduction,
                                    chunk_budget=4 * 5 * 8, **options)

    assert torch.autograd.gradcheck(fn, differentiable, check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(fn, differentiable)


# ---- autograd behaviour -----------------------------------------------------------------------------
def test_retain_graph_second_backward_none_reduction_and_scaled_upstream_gradients():
    x, w, b, t, weight = make_case((12,), 6, 9, bias=True, weighted=True)
    for reduction in REDUCTIONS:
        xs = [v.detach().clone().requires_grad_() for v in (x, w, b)]
        loss = linear_cross_entropy(xs[0], xs[1], t, linear_bias=xs[2], weight=weight, reduction=reduction)
        grad_output = torch.linspace(-3, 2, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        first = torch.autograd.grad(loss, xs, grad_output, retain_graph=True)
        second = torch.autograd.grad(loss, xs, grad_output * 0.5, retain_graph=True)
        third = torch.autograd.grad(loss, xs, grad_output)
        ref = loss_and_grads(reference, x, w, b, t, grad_output=grad_output, weight=weight, reduction=reduction)[1:]
        for f, s, th, r in zip(first, second, third, ref):
            torch.testing.assert_close(f, r)
            torch.testing.assert_close(s, r * 0.5)
            torch.testing.assert_close(th, r)


def test_inputs_are_never_modified():
    x, w, b, t, weight = make_case((10,), 5, 7, bias=True, weighted=True)
    copies = [v.clone() for v in (x, w, b, t, weight)]
    xs = [v.requires_grad_() for v in (x, w, b)]
    linear_cross_entropy(xs[0], xs[1], t, linear_bias=xs[2], weight=weight).backward()
    for v, c in zip((x, w, b, t, weight), copies):
        assert torch.equal(v.detach(), c)


def test_only_requested_gradients_are_computed_ahead():
    """The forward computes ahead exactly the gradients whose inputs require grad (scalar reductions), none
    under no_grad or for reduction 'none'."""
    x, w, b, t, _ = make_case((6,), 4, 5, bias=True)
    seen = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is ops.linear_cross_entropy_forward.default:
                seen.append(list(args[10]))
            return func(*args, **(kwargs or {}))

    for needs in itertools.product([False, True], repeat=3):
        tensors = [v.detach().clone().requires_grad_(n) for v, n in zip((x, w, b), needs)]
        seen.clear()
        with Spy():
            linear_cross_entropy(tensors[0], tensors[1], t, linear_bias=tensors[2])
            with torch.no_grad():
                linear_cross_entropy(tensors[0], tensors[1], t, linear_bias=tensors[2])
            linear_cross_entropy(tensors[0], tensors[1], t, linear_bias=tensors[2], reduction="none")
        assert seen == [list(needs), [False] * 3, [False] * 3]


def test_weight_gradient_is_refused_as_torch_does():
    x, w, b, t, weight = make_case((4,), 3, 5, weighted=True)
    weight.requires_grad_()
    loss = linear_cross_entropy(x.requires_grad_(), w, t, weight=weight)
    with pytest.raises(RuntimeError, match="derivative for 'weight' is not implemented"):
        loss.backward()


def test_function_apply_returns_the_loss_and_the_gradients_computed_ahead():
    x, w, b, t, _ = make_case((5,), 4, 6, bias=True)
    loss, gx, gw, gb = LinearCrossEntropyFunction.apply(
        x, w, b, t, None, "sum", -100, 0.0, 0.0, None, [True, True, True], 1 << 20)
    ref = loss_and_grads(reference, x, w, b, t, reduction="sum", grad_output=torch.tensor(1.0, dtype=torch.float64))
    for a, r in zip((loss, gx, gw, gb), ref):
        torch.testing.assert_close(a, r)


def test_deterministic_run_to_run_and_across_thread_counts():
    x, w, b, t, weight = make_case((300,), 32, 2000, dtype=torch.float32, bias=True, weighted=True)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            runs.append(loss_and_grads(linear_cross_entropy, x, w, b, t, weight=weight, chunk_budget=2000 * 4 * 37))
    finally:
        torch.set_num_threads(threads)
    for a, b_ in zip(runs[0], runs[1]):
        assert torch.equal(a, b_)
    for a, c in zip(runs[0], runs[2]):
        torch.testing.assert_close(a, c)


# ---- reduced precision ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [{}, dict(label_smoothing=0.1, softcap=30.0, lse_square_scale=1e-4)], ids=["plain", "all"])
def test_reduced_precision_no_less_accurate_than_torchs_composite(dtype, options):
    x, w, b, t, _ = make_case((300,), 64, 5003, dtype=torch.float64, bias=True)
    exact = loss_and_grads(reference, x, w, b, t, **options)
    native = loss_and_grads(reference, x.to(dtype), w.to(dtype), b.to(dtype), t, **options)
    ours = loss_and_grads(linear_cross_entropy, x.to(dtype), w.to(dtype), b.to(dtype), t, chunk_budget=1 << 20,
                          **options)
    for name, o, n, e in zip(["loss", "input", "linear_weight", "linear_bias"], ours, native, exact):
        assert o.dtype == dtype
        ours_error = (o.double() - e).abs().max().item()
        native_error = (n.double() - e).abs().max().item()
        assert ours_error <= 2 * native_error + torch.finfo(dtype).eps * e.abs().max().item(), (
            f"{name}: error {ours_error:.3g}, torch's {dtype} composite {native_error:.3g}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunks", [1, 2, 3, 64])
def test_reduced_precision_weight_gradient_is_summed_in_float32_across_chunks(dtype, chunks):
    # 64 tokens in `chunks` chunks (64: one token each): a running sum in the reduced dtype would lose ~8 bits
    # (bfloat16) over 64 chunks; the float32 one, rounded once, keeps the weight gradient within a rounding of
    # the exact value however the tokens are chunked.
    tokens, classes = 64, 40
    budget = -(-tokens // chunks) * classes * torch.finfo(dtype).bits // 8  # the logits of ceil(64 / chunks) tokens
    x, w, b, t, _ = make_case((tokens,), 16, classes, ignored=False)
    exact = loss_and_grads(reference, x, w, b, t)[2]
    ours = loss_and_grads(linear_cross_entropy, x.to(dtype), w.to(dtype), b, t, chunk_budget=budget)[2]
    assert ours.dtype == dtype
    rounding = (exact.to(dtype).double() - exact).abs().max().item()
    exact_of_rounded = loss_and_grads(reference, x.to(dtype).double(), w.to(dtype).double(), b, t)[2]
    assert (ours.double() - exact_of_rounded).abs().max().item() <= 4 * rounding


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_gradients_computed_ahead(dtype):
    # The forward op's ahead gradients for g = 1: the weight gradient already rounded to the input's dtype
    # (autograd takes it as it is), the bias gradient in float32; both match the float64 composite.
    x, w, b, t, _ = make_case((50,), 16, 300, bias=True)
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    for budget in (1 << 20, 16 * 300 * 2, 1):  # one, four, fifty chunks
        loss, gx, gw, gb = LinearCrossEntropyFunction.apply(
            x, w, b, t, None, "mean", -100, 0.0, 0.0, None, [True, True, True], budget)
        assert (gx.dtype, gw.dtype, gb.dtype) == (dtype, dtype, torch.float32)
        ref = loss_and_grads(reference, x.double(), w.double(), b.double(), t,
                             grad_output=torch.tensor(1.0, dtype=torch.float64))
        for name, a, r in zip(("input", "linear_weight", "linear_bias"), (gx, gw, gb), ref[1:]):
            tolerance = 8 * torch.finfo(dtype).eps * r.abs().max().item()
            assert (a.double() - r).abs().max().item() <= tolerance, (name, budget)
        torch.library.opcheck(
            torch.ops.torch_manualbp.linear_cross_entropy_forward.default,
            (x, w, b, t, None, "mean", -100, 0.0, 0.0, None, [True, True, True], budget),
            test_utils=("test_schema", "test_faketensor"))


# ---- memory -----------------------------------------------------------------------------------------
def test_nothing_of_the_logits_size_is_saved_for_backward():
    x, w, b, t, _ = make_case((64,), 8, 1000, dtype=torch.float32, bias=True)
    saved = []
    x.requires_grad_()
    w.requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: saved.append(tensor.numel()) or tensor, lambda tensor: tensor):
        for reduction in REDUCTIONS:
            linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction)
    assert saved and max(saved) < 64 * 1000, saved


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    import torch_manualbp
    from torch_manualbp.functional import linear_cross_entropy
    torch.manual_seed(0)
    tokens, features, classes, budget = {tokens}, {features}, {classes}, {budget}
    x = torch.randn(tokens, features, requires_grad=True)
    w = (torch.randn(classes, features) * 0.05).requires_grad_()
    t = torch.randint(0, classes, (tokens,))
    linear_cross_entropy(x[:8], w, t[:8], chunk_budget=budget).backward()  # warm up the allocator and libraries
    x.grad = w.grad = None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = linear_cross_entropy(x, w, t, chunk_budget=budget)
    loss.backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024)
""")


@pytest.mark.slow
def test_peak_memory_is_the_gradients_and_one_chunk():
    tokens, features, classes, budget = 4096, 64, 32768, 16 << 20
    logits_bytes = tokens * classes * 4
    gradients_bytes = (tokens + classes) * features * 4
    script = PEAK_SCRIPT.format(tokens=tokens, features=features, classes=classes, budget=budget)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    peak = int(out.stdout.strip().splitlines()[-1])
    assert peak < gradients_bytes + budget + (24 << 20), (peak, logits_bytes)
    assert peak < logits_bytes / 4


@pytest.mark.slow
def test_a_shape_whose_logits_would_not_fit_in_memory_trains():
    # 32768 tokens x 131072 classes: 16 GiB of float32 logits, more than this machine can hold next to
    # anything else; the fused layer holds one chunk. Checked against a few tokens computed by the composite.
    tokens, features, classes = 32768, 32, 131072
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, features, generator=g).requires_grad_()
    w = (torch.randn(classes, features, generator=g) * 0.1).requires_grad_()
    t = torch.randint(0, classes, (tokens,), generator=g)
    per_token = linear_cross_entropy(x, w, t, reduction="none")
    sample = torch.arange(0, tokens, 4099)
    torch.testing.assert_close(per_token[sample], reference(x[sample].detach(), w.detach(), t[sample], reduction="none"))
    loss = per_token.mean()
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    del per_token, loss
    with torch.no_grad():
        before = linear_cross_entropy(x, w, t)
        x -= 0.5 * x.grad
        w -= 0.5 * w.grad * tokens
        assert linear_cross_entropy(x, w, t) < before


# ---- property test ----------------------------------------------------------------------------------
@settings(max_examples=30)
@given(
    tokens=st.integers(0, 40), features=st.integers(1, 9), classes=st.integers(1, 70),
    kind=st.sampled_from(["index", "probability"]), reduction=st.sampled_from(REDUCTIONS),
    smoothing=st.sampled_from([0.0, 0.3]), weighted=st.booleans(), bias=st.booleans(),
    softcap=st.sampled_from([None, 1.5]), z_loss=st.sampled_from([0.0, 0.2]), budget=st.integers(1, 4000),
    seed=st.integers(0, 1000),
)
@example(tokens=33, features=3, classes=17, kind="index", reduction="mean", smoothing=0.3, weighted=True, bias=True,
         softcap=1.5, z_loss=0.2, budget=17 * 8 * 4, seed=0)
# Classes past one and two blocks of 1024 (kTargetBlock), tokens in chunks of 4 and 3 (float64: 8 bytes).
@example(tokens=9, features=3, classes=1025, kind="probability", reduction="none", smoothing=0.3, weighted=True,
         bias=True, softcap=None, z_loss=0.2, budget=4 * 1025 * 8, seed=1)
@example(tokens=10, features=4, classes=2049, kind="index", reduction="sum", smoothing=0.0, weighted=False,
         bias=True, softcap=1.5, z_loss=0.0, budget=3 * 2049 * 8 + 7, seed=2)
def test_random_shapes_options_and_chunks_match_composite(tokens, features, classes, kind, reduction, smoothing,
                                                            weighted, bias, softcap, z_loss, budget, seed):
    x, w, b, t, weight = make_case((tokens,), features, classes, kind, bias=bias, weighted=weighted, seed=seed)
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=smoothing, softcap=softcap,
                  lse_square_scale=z_loss)
    ours = loss_and_grads(linear_cross_entropy, x, w, b, t, chunk_budget=budget, **kwargs)
    ref = loss_and_grads(reference, x, w, b, t, **kwargs)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-9, equal_nan=True)


# ---- bad input --------------------------------------------------------------------------------------
def _bad(**changes):
    x, w, b, t, weight = make_case((4,), 3, 5, bias=True, weighted=True, ignored=False)
    args = dict(input=x, linear_weight=w, target=t, linear_bias=b, weight=weight)
    args.update(changes)
    return args


BAD_INPUTS = [
    (dict(input=torch.randn(4, 2, dtype=torch.float64)), RuntimeError, "expected input.size\\(-1\\) to equal linear_weight.size\\(1\\)"),
    (dict(linear_weight=torch.randn(5, 3, 1, dtype=torch.float64)), RuntimeError, "linear_weight of shape \\(num_classes, in_features\\)"),
    (dict(linear_bias=torch.randn(4, dtype=torch.float64)), RuntimeError, "expected linear_bias of shape \\(num_classes,\\) = \\(5,\\)"),
    (dict(weight=torch.rand(6, dtype=torch.float64)), RuntimeError, "expected weight of shape \\(num_classes,\\) = \\(5,\\)"),
    (dict(target=torch.tensor([0, 1, 5, 2])), IndexError, "Target 5 is out of bounds"),
    (dict(target=torch.tensor([0, -1, 2, 2])), IndexError, "Target -1 is out of bounds"),
    (dict(target=torch.zeros(3, dtype=torch.long)), RuntimeError, "expected target of shape \\[4\\]"),
    (dict(target=torch.zeros(4, dtype=torch.int32)), RuntimeError, "expected target of dtype int64 or uint8"),
    (dict(target=torch.rand(4, 5, dtype=torch.float32)), RuntimeError, "expected target \\(class probabilities\\) to have the same dtype as input"),
    (dict(linear_weight=torch.randn(5, 3, dtype=torch.float32)), RuntimeError, "expected linear_weight to have the same dtype as input"),
    (dict(linear_bias=torch.randn(5, dtype=torch.float32)), RuntimeError, "expected linear_bias to have the same dtype as input"),
    (dict(input=torch.ones(4, 3, dtype=torch.long), linear_weight=torch.ones(5, 3, dtype=torch.long), linear_bias=None, weight=None), TypeError, "expected input to be a floating-point tensor"),
    (dict(input=torch.tensor(1.0, dtype=torch.float64)), RuntimeError, "expected input of shape \\(\\*, in_features\\) with at least 1 dimension"),
    (dict(reduction="avg"), ValueError, "avg is not a valid value for reduction"),
    (dict(label_smoothing=1.5), RuntimeError, "label_smoothing must be between 0.0 and 1.0"),
    (dict(label_smoothing=-0.1), RuntimeError, "label_smoothing must be between 0.0 and 1.0"),
    (dict(softcap=0.0), RuntimeError, "expected softcap to be None or a finite number > 0"),
    (dict(softcap=-1.0), RuntimeError, "expected softcap to be None or a finite number > 0"),
    (dict(lse_square_scale=-1.0), RuntimeError, "expected lse_square_scale to be a finite number >= 0"),
    (dict(chunk_budget=0), ValueError, "chunk_budget"),
    (dict(target=torch.rand(4, 5, dtype=torch.float64), ignore_index=3), RuntimeError, "ignore_index is not supported for class-probability targets"),
    (dict(input=[1.0, 2.0]), TypeError, "argument 'input' must be Tensor"),
    (dict(linear_bias=3.0), TypeError, "argument 'linear_bias' must be Tensor or None"),
    (dict(ignore_index=1.5), TypeError, "argument 'ignore_index' must be int"),
    (dict(label_smoothing="0.1"), TypeError, "argument 'label_smoothing' must be float"),
    (dict(softcap="1"), TypeError, "argument 'softcap' must be float or None"),
]


@pytest.mark.parametrize("changes,error,message", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_input(changes, error, message):
    args = _bad(**changes)
    with pytest.raises(error, match=message):
        linear_cross_entropy(
            args.pop("input"), args.pop("linear_weight"), args.pop("target"), **args,
        )


def test_bad_input_on_direct_op_calls():
    x, w, b, t, _ = make_case((4,), 3, 5, bias=True, ignored=False)
    common = (None, "mean", -100, 0.0, 0.0, None)
    with pytest.raises(RuntimeError, match="grad_mask\\) need reduction 'mean' or 'sum'"):
        ops.linear_cross_entropy_forward(x, w, b, t, None, "none", -100, 0.0, 0.0, None, [True, False, False], 1 << 20)
    with pytest.raises(RuntimeError, match="chunk_budget"):
        ops.linear_cross_entropy_forward(x, w, b, t, *common, [False] * 3, 0)
    with pytest.raises(IndexError, match="Target 7 is out of bounds"):
        ops.linear_cross_entropy_backward(
            torch.tensor(1.0, dtype=torch.float64), x, w, b, torch.tensor([0, 7, 1, 1]), *common, [True] * 4, 64)
    with pytest.raises(RuntimeError, match="expected grad_loss of shape \\[4\\]"):
        ops.linear_cross_entropy_backward(
            torch.tensor(1.0, dtype=torch.float64), x, w, b, t, None, "none", -100, 0.0, 0.0, None, [True] * 4, 64)
    with pytest.raises(RuntimeError, match="expected grad_loss to have the same dtype as input"):
        ops.linear_cross_entropy_backward(torch.tensor(1.0), x, w, b, t, *common, [True] * 4, 64)
