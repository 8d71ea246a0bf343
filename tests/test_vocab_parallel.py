"""Vocab-parallel softmax_cross_entropy and linear_cross_entropy (process_group=...) over gloo: groups of 2 and 4
spawned processes, each holding an uneven block of the classes, run the option grid in float64 (reductions,
ignore_index outside and inside the class range, label smoothing, class weights, softcap, z-loss, index and
probability targets, linear_bias, several chunks) and a few thousand classes in float32. Every rank's loss must
equal the single-process loss of native ops (F.cross_entropy of the whole logits, materialised) and every
gradient block the slice of its gradient; the input gradient of linear_cross_entropy the whole one on every
rank. Then the collectives of a call are counted, bad input must raise the same exception on every rank without
leaving any waiting (a good call afterwards still agrees), the modules take process_group, and torch.compile
gives the same numbers.

Each group runs all its cases in one spawn (the processes report per case); the tests read the reports."""
import itertools
import json
import math
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from test_distributed import _free_port, run_workers

WORLD_SIZES = (2, 4)
BLOCKS = {2: [4, 7], 4: [3, 1, 5, 2]}  # uneven blocks of 11 classes
CLASSES = 11
TOKENS, FEATURES = 7, 5
REDUCTIONS = ("none", "mean", "sum")
TARGETS = ("index", "index_ignored", "index_ignored_in_range", "probability")
TIMEOUT_S = 300


# ---- the reference: the single-process loss of native ops -------------------------------------------------
def reference_loss(logits, target, weight, reduction, ignore_index, label_smoothing, lse_square_scale, softcap):
    """softcap, F.cross_entropy ('none') and the z-loss lambda logsumexp^2 per non-ignored token, reduced as
    torch's 'mean' (the cross-entropy over the target weights, the z-loss over the non-ignored tokens)."""
    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    per_token = F.cross_entropy(z, target, weight=weight, ignore_index=ignore_index, reduction="none",
                                label_smoothing=label_smoothing)
    probability = target.is_floating_point()
    if probability:
        kept = torch.ones(per_token.shape, dtype=torch.bool)
        normalizer = per_token.new_tensor(float(per_token.numel()))
    else:
        kept = target != ignore_index
        w = torch.ones(z.shape[-1], dtype=z.dtype) if weight is None else weight
        normalizer = (w[torch.where(kept, target, 0)] * kept).sum()
    z_loss = lse_square_scale * torch.logsumexp(z, -1).square() * kept
    if reduction == "none":
        return per_token + z_loss
    if reduction == "sum":
        return per_token.sum() + z_loss.sum()
    return per_token.sum() / normalizer + z_loss.sum() / kept.sum()


# ---- cases ------------------------------------------------------------------------------------------------
def grid_cases():
    """The option grid: (layer, reduction, target kind, label smoothing, weighted, softcap, z-loss, bias)."""
    cases = []
    for layer, reduction, kind, eps, weighted, softcap, lam in itertools.product(
        ("softmax_cross_entropy", "linear_cross_entropy"), REDUCTIONS, TARGETS, (0.0, 0.2), (False, True),
        (None, 1.5), (0.0, 0.05),
    ):
        biases = (False, True) if layer == "linear_cross_entropy" else (False,)
        for bias in biases:
            cases.append(dict(layer=layer, reduction=reduction, kind=kind, eps=eps, weighted=weighted,
                              softcap=softcap, lam=lam, bias=bias))
    for index, case in enumerate(cases):
        case["seed"] = index
        # Some linear cases in chunks of 3 tokens (the chunk loop with a block's partials), some 3-D inputs.
        case["chunk_rows"] = 3 if index % 3 == 0 else None
        case["leading"] = (TOKENS,) if index % 4 else (1, TOKENS)
    return cases


def case_id(case):
    parts = [case["layer"], case["reduction"], case["kind"], f"eps{case['eps']}", "w" if case["weighted"] else "",
             f"cap{case['softcap']}" if case["softcap"] else "", f"z{case['lam']}" if case["lam"] else "",
             "bias" if case["bias"] else "", f"chunk{case['chunk_rows']}" if case["chunk_rows"] else "",
             "3d" if len(case["leading"]) > 1 else ""]
    return "-".join(p for p in parts if p)


def make_data(seed, tokens, classes, features, kind, weighted, dtype=torch.float64, scale=3.0):
    """The same full tensors on every rank: logits (softmax_cross_entropy), x, W, b (linear), target, weight."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(tokens, classes, dtype=torch.float64, generator=g) * scale
    x = torch.randn(tokens, features, dtype=torch.float64, generator=g)
    W = torch.randn(classes, features, dtype=torch.float64, generator=g) * scale / math.sqrt(features)
    b = torch.randn(classes, dtype=torch.float64, generator=g)
    if kind == "probability":
        target = torch.rand(tokens, classes, dtype=torch.float64, generator=g)
        ignore_index = -100
    else:
        target = torch.randint(0, classes, (tokens,), generator=g)
        ignore_index = -100
        if kind == "index_ignored":
            target[1::3] = -100
        elif kind == "index_ignored_in_range":
            ignore_index = 2
            target[0] = 2
            target[4] = 2
    weight = torch.rand(classes, dtype=torch.float64, generator=g) + 0.2 if weighted else None
    upstream = torch.randn(tokens, dtype=torch.float64, generator=g)
    data = dict(logits=logits, x=x, W=W, b=b, target=target, weight=weight, upstream=upstream)
    return {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in data.items()}, ignore_index


# ---- inside the processes ---------------------------------------------------------------------------------
class Report:
    """Per-case failures of this rank (an assertion inside a worker must not stop it: the others would wait)."""

    def __init__(self):
        self.failures = {}
        self.ran = []

    def check(self, name, fn):
        self.ran.append(name)
        try:
            fn()
        except Exception as error:  # noqa: BLE001  (recorded; the test reports it)
            self.failures[name] = f"{type(error).__name__}: {error}"[:3000]


def _close(actual, expected, name, rtol, atol=0.0):
    """|actual - expected| <= atol + rtol * max |expected| elementwise (a tolerance on the tensor's scale)."""
    assert actual is not None, f"{name}: no gradient"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    error = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    allowed = atol + rtol * (expected.double().abs().max().item() if expected.numel() else 0.0)
    assert error <= allowed, f"{name}: max |difference| {error:.3e} > allowed {allowed:.3e}"


def run_grid_case(case, rank, world_size, group, rtol=1e-10):
    import torch_manualbp.functional as MF

    blocks = BLOCKS[world_size]
    lo = sum(blocks[:rank])
    hi = lo + blocks[rank]
    data, ignore_index = make_data(case["seed"], TOKENS, CLASSES, FEATURES, case["kind"], case["weighted"])
    probability = case["kind"] == "probability"
    options = dict(reduction=case["reduction"], ignore_index=ignore_index, label_smoothing=case["eps"],
                   lse_square_scale=case["lam"], softcap=case["softcap"])
    leading = case["leading"]
    target_full = data["target"].reshape(*leading, CLASSES) if probability else data["target"].reshape(leading)
    weight = data["weight"]
    weight_block = None if weight is None else weight[lo:hi].clone()
    upstream = data["upstream"].reshape(leading) if case["reduction"] == "none" else torch.tensor(1.7, dtype=torch.float64)

    # The reference on the whole logits.
    if case["layer"] == "softmax_cross_entropy":
        full = data["logits"].clone().requires_grad_()
        reference_inputs = [full]
        logits = full
    else:
        x_full = data["x"].clone().requires_grad_()
        W_full = data["W"].clone().requires_grad_()
        b_full = data["b"].clone().requires_grad_() if case["bias"] else None
        reference_inputs = [x_full, W_full] + ([b_full] if case["bias"] else [])
        logits = F.linear(x_full, W_full, b_full)
    p_full = data["target"].clone().requires_grad_() if probability else None
    ref_target = p_full if probability else data["target"]
    loss_ref = reference_loss(logits, ref_target, weight, **options)
    ref_grads = torch.autograd.grad((loss_ref * data["upstream"] if case["reduction"] == "none" else loss_ref * 1.7).sum(),
                                    reference_inputs + ([p_full] if probability else []))
    if case["reduction"] == "none":
        loss_ref = loss_ref.reshape(leading)

    # The sharded call: this rank's block.
    target = target_full
    p_block = None
    if probability:
        p_block = target_full[..., lo:hi].clone().requires_grad_()
        target = p_block
    if case["layer"] == "softmax_cross_entropy":
        block = data["logits"][:, lo:hi].clone().requires_grad_()
        loss = MF.softmax_cross_entropy(block, target.reshape(TOKENS, -1) if probability else target.reshape(-1),
                                        weight_block, process_group=group, **options)
        inputs, names = [block], ["grad_input block"]
        expected = [ref_grads[0][:, lo:hi]]
        loss_ref = loss_ref.reshape(-1) if case["reduction"] == "none" else loss_ref
        upstream = upstream.reshape(-1) if case["reduction"] == "none" else upstream
    else:
        x = data["x"].reshape(*leading, FEATURES).clone().requires_grad_()
        W_block = data["W"][lo:hi].clone().requires_grad_()
        b_block = data["b"][lo:hi].clone().requires_grad_() if case["bias"] else None
        budget = case["chunk_rows"] * blocks[rank] * 8 if case["chunk_rows"] else None
        loss = MF.linear_cross_entropy(x, W_block, target, linear_bias=b_block, weight=weight_block,
                                       chunk_budget=budget, process_group=group, **options)
        inputs = [x, W_block] + ([b_block] if case["bias"] else [])
        names = ["grad_input (whole)", "grad_linear_weight block"] + (["grad_linear_bias block"] if case["bias"] else [])
        expected = [ref_grads[0].reshape(*leading, FEATURES), ref_grads[1][lo:hi]] + ([ref_grads[2][lo:hi]] if case["bias"] else [])
    if probability:
        inputs.append(p_block)
        names.append("grad_target block")
        p_grad = ref_grads[-1][:, lo:hi]
        expected.append(p_grad.reshape(p_block.shape))
    _close(loss.detach(), loss_ref.detach(), "loss", rtol, atol=1e-300)
    grads = torch.autograd.grad((loss * upstream).sum(), inputs)
    for grad, want, name in zip(grads, expected, names):
        _close(grad, want, name, rtol)


def run_float32_case(layer, rank, world_size, group):
    """A few thousand classes in float32, uneven blocks, against the float64 reference."""
    import torch_manualbp.functional as MF

    classes = 4099
    sizes = [classes // world_size + (1 if r < classes % world_size else 0) for r in range(world_size)]
    sizes[0] += 7
    sizes[-1] -= 7
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    data, ignore_index = make_data(1000 + world_size, 24, classes, 32, "index_ignored", True)
    options = dict(reduction="mean", ignore_index=ignore_index, label_smoothing=0.1, lse_square_scale=1e-3, softcap=20.0)
    weight = data["weight"]
    if layer == "softmax_cross_entropy":
        full = data["logits"].clone().requires_grad_()
        loss_ref = reference_loss(full, data["target"], weight, **options)
        (g_ref,) = torch.autograd.grad(loss_ref, [full])
        block = data["logits"][:, lo:hi].float().clone().requires_grad_()
        loss = MF.softmax_cross_entropy(block, data["target"], weight[lo:hi].float(), process_group=group, **options)
        (g,) = torch.autograd.grad(loss, [block])
        _close(loss.detach().double(), loss_ref.detach(), "float32 loss", 1e-5)
        _close(g.double(), g_ref[:, lo:hi], "float32 grad_input block", 1e-4)
    else:
        x_full = data["x"].clone().requires_grad_()
        W_full = data["W"].clone().requires_grad_()
        loss_ref = reference_loss(F.linear(x_full, W_full), data["target"], weight, **options)
        gx_ref, gW_ref = torch.autograd.grad(loss_ref, [x_full, W_full])
        x = data["x"].float().clone().requires_grad_()
        W_block = data["W"][lo:hi].float().clone().requires_grad_()
        loss = MF.linear_cross_entropy(x, W_block, data["target"], weight=weight[lo:hi].float(),
                                       chunk_budget=sizes[rank] * 4 * 10, process_group=group, **options)
        gx, gW = torch.autograd.grad(loss, [x, W_block])
        _close(loss.detach().double(), loss_ref.detach(), "float32 loss", 1e-5)
        _close(gx.double(), gx_ref, "float32 grad_input", 1e-4)
        _close(gW.double(), gW_ref[lo:hi], "float32 grad_linear_weight block", 1e-4)


def count_collectives(rank, world_size, group):
    """The collectives of one call, forward and backward: one all_gather and two all_reduces forward; none
    backward for softmax_cross_entropy, one (the input gradient) for linear_cross_entropy."""
    import torch_manualbp.functional as MF

    counts = {}
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather", "broadcast", "all_gather_into_tensor")}

    def counting(name):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return originals[name](*args, **kwargs)
        return wrapper

    lo = sum(BLOCKS[world_size][:rank])
    hi = lo + BLOCKS[world_size][rank]
    data, _ = make_data(7, TOKENS, CLASSES, FEATURES, "index", False)
    result = {}
    try:
        for name in originals:
            setattr(dist, name, counting(name))
        block = data["logits"][:, lo:hi].clone().requires_grad_()
        loss = MF.softmax_cross_entropy(block, data["target"], process_group=group, label_smoothing=0.1)
        result["softmax_cross_entropy forward"] = dict(counts)
        counts.clear()
        loss.backward()
        result["softmax_cross_entropy backward"] = dict(counts)
        counts.clear()
        x = data["x"].clone().requires_grad_()
        W_block = data["W"][lo:hi].clone().requires_grad_()
        loss = MF.linear_cross_entropy(x, W_block, data["target"], process_group=group)
        result["linear_cross_entropy forward"] = dict(counts)
        counts.clear()
        loss.backward()
        result["linear_cross_entropy backward"] = dict(counts)
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    return result


def bad_inputs(rank, world_size, group):
    """Each bad call on every rank: (exception type, message) per rank, or None where it did not raise."""
    import torch_manualbp.functional as MF

    blocks = BLOCKS[world_size]
    lo = sum(blocks[:rank])
    hi = lo + blocks[rank]
    data, _ = make_data(11, TOKENS, CLASSES, FEATURES, "index", True)
    logits = data["logits"][:, lo:hi].clone()
    x, W_block = data["x"], data["W"][lo:hi].clone()

    def outside():
        target = data["target"].clone()
        target[3] = CLASSES  # one past the last global class
        return target

    def negative():
        target = data["target"].clone()
        target[5] = -3
        return target

    wrong_weight = data["weight"][lo:hi].clone()
    if rank == 1:
        wrong_weight = torch.cat([wrong_weight, wrong_weight[:1]])  # one class too many
    tokens = TOKENS - 1 if rank == 0 else TOKENS
    calls = {
        "target outside the classes (softmax_cross_entropy)":
            lambda: MF.softmax_cross_entropy(logits, outside(), process_group=group),
        "target outside the classes (linear_cross_entropy)":
            lambda: MF.linear_cross_entropy(x, W_block, outside(), process_group=group),
        "negative target (softmax_cross_entropy)":
            lambda: MF.softmax_cross_entropy(logits, negative(), process_group=group),
        "class-weight block of the wrong size (softmax_cross_entropy)":
            lambda: MF.softmax_cross_entropy(logits, data["target"], wrong_weight, process_group=group),
        "class-weight block of the wrong size (linear_cross_entropy)":
            lambda: MF.linear_cross_entropy(x, W_block, data["target"], weight=wrong_weight, process_group=group),
        "ranks disagree on the token count (softmax_cross_entropy)":
            lambda: MF.softmax_cross_entropy(logits[:tokens], data["target"][:tokens], process_group=group),
        "ranks disagree on the token count (linear_cross_entropy)":
            lambda: MF.linear_cross_entropy(x[:tokens], W_block, data["target"][:tokens], process_group=group),
        "spatial input (softmax_cross_entropy)":
            lambda: MF.softmax_cross_entropy(logits.reshape(TOKENS, -1, 1), data["target"].reshape(TOKENS, 1),
                                             process_group=group),
        "a bad option on one rank (linear_cross_entropy)":
            lambda: MF.linear_cross_entropy(x, W_block, data["target"], label_smoothing=2.0 if rank == 0 else 0.1,
                                            process_group=group),
    }
    raised = {}
    for name, call in calls.items():
        try:
            call()
            raised[name] = None
        except Exception as error:  # noqa: BLE001  (the type is what the test checks)
            raised[name] = [type(error).__name__, str(error)]
    # The group is still in step: a good call agrees with the reference.
    good = MF.softmax_cross_entropy(logits, data["target"], process_group=group)
    reference = F.cross_entropy(data["logits"], data["target"])
    raised["good call afterwards"] = abs(good.item() - reference.item()) <= 1e-12 * abs(reference.item())
    return raised


def run_modules(rank, world_size, group, report):
    import torch_manualbp

    blocks = BLOCKS[world_size]
    lo = sum(blocks[:rank])
    hi = lo + blocks[rank]
    data, _ = make_data(21, TOKENS, CLASSES, FEATURES, "index_ignored", True)
    options = dict(ignore_index=-100, label_smoothing=0.1, lse_square_scale=0.01, softcap=4.0)

    def softmax_module():
        module = torch_manualbp.SoftmaxCrossEntropyLoss(data["weight"][lo:hi], process_group=group, **options)
        loss = module(data["logits"][:, lo:hi], data["target"])
        _close(loss, reference_loss(data["logits"], data["target"], data["weight"], "mean", **options), "loss", 1e-12)

    def linear_module():
        module = torch_manualbp.LinearCrossEntropyLoss(FEATURES, hi - lo, bias=True, dtype=torch.float64,
                                                       weight=data["weight"][lo:hi], process_group=group, **options)
        with torch.no_grad():
            module.linear.weight.copy_(data["W"][lo:hi])
            module.linear.bias.copy_(data["b"][lo:hi])
        x = data["x"].clone().requires_grad_()
        loss = module(x, data["target"])
        loss.backward()
        x_ref = data["x"].clone().requires_grad_()
        W_ref = data["W"].clone().requires_grad_()
        expected = reference_loss(F.linear(x_ref, W_ref, data["b"]), data["target"], data["weight"], "mean", **options)
        expected.backward()
        _close(loss.detach(), expected.detach(), "loss", 1e-12)
        _close(x.grad, x_ref.grad, "grad_input", 1e-10)
        _close(module.linear.weight.grad, W_ref.grad[lo:hi], "linear.weight.grad", 1e-10)

    def one_dimensional():
        import torch_manualbp.functional as MF

        row = data["logits"][2, lo:hi].clone().requires_grad_()
        loss = MF.softmax_cross_entropy(row, data["target"][2], process_group=group, label_smoothing=0.1)
        (grad,) = torch.autograd.grad(loss, [row])
        full = data["logits"][2].clone().requires_grad_()
        expected = F.cross_entropy(full, data["target"][2], label_smoothing=0.1)
        _close(loss.detach(), expected.detach(), "loss", 1e-12)
        _close(grad, torch.autograd.grad(expected, [full])[0][lo:hi], "grad_input block", 1e-10)

    report.check("module SoftmaxCrossEntropyLoss", softmax_module)
    report.check("1-D input", one_dimensional)
    report.check("module LinearCrossEntropyLoss", linear_module)


def run_compiled(rank, world_size, group, report):
    """torch.compile around a model whose loss is sharded: the same loss and gradients as eager."""
    import torch_manualbp.functional as MF

    blocks = BLOCKS[world_size]
    lo = sum(blocks[:rank])
    hi = lo + blocks[rank]
    data, _ = make_data(31, TOKENS, CLASSES, FEATURES, "index", False)

    def step(x, W_block, target):
        hidden = torch.tanh(x) * 1.5
        loss = MF.linear_cross_entropy(hidden, W_block, target, process_group=group, softcap=5.0, label_smoothing=0.1)
        logits = hidden @ W_block.t()
        return loss + MF.softmax_cross_entropy(logits, target, process_group=group, lse_square_scale=0.01)

    def compare():
        results = []
        for fn in (step, torch.compile(step, backend=os.environ.get("TORCH_MANUALBP_TEST_COMPILE_BACKEND", "inductor"))):
            x = data["x"].clone().requires_grad_()
            W_block = data["W"][lo:hi].clone().requires_grad_()
            loss = fn(x, W_block, data["target"])
            loss.backward()
            results.append((loss.detach(), x.grad, W_block.grad))
        (loss, gx, gW), (loss_c, gx_c, gW_c) = results
        _close(loss_c, loss, "compiled loss", 1e-12)
        _close(gx_c, gx, "compiled grad_input", 1e-12)
        _close(gW_c, gW, "compiled grad_linear_weight block", 1e-12)

    report.check("torch.compile", compare)


def _worker(rank, world_size, port, result_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        group = dist.new_group(list(range(world_size)))  # a group of its own, not only the default one
        report = Report()
        for case in grid_cases():
            report.check(case_id(case), lambda: run_grid_case(case, rank, world_size, group))
        for layer in ("softmax_cross_entropy", "linear_cross_entropy"):
            report.check(f"float32 {layer}", lambda: run_float32_case(layer, rank, world_size, group))
        collectives = count_collectives(rank, world_size, group)
        raised = bad_inputs(rank, world_size, group)
        run_modules(rank, world_size, group, report)
        if world_size == 2:
            run_compiled(rank, world_size, group, report)
        with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as out:
            json.dump(dict(failures=report.failures, ran=report.ran, collectives=collectives, raised=raised), out)
    finally:
        dist.destroy_process_group()


_RESULTS = {}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The reports of each rank, per world size (each group spawned once, when a test first needs it)."""

    def get(world_size):
        if world_size not in _RESULTS:
            result_dir = tmp_path_factory.mktemp(f"vocab_parallel{world_size}")
            run_workers(_worker, (world_size, _free_port(), str(result_dir)), world_size=world_size, timeout_s=TIMEOUT_S)
            _RESULTS[world_size] = [json.load(open(result_dir / f"rank{r}.json")) for r in range(world_size)]
        return _RESULTS[world_size]

    return get


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_option_grid_matches_the_single_process_loss(results, world_size):
    names = [case_id(case) for case in grid_cases()]
    assert len(names) == len(set(names)) == 3 * 4 * 2 * 2 * 2 * 2 * 3
    for rank, report in enumerate(results(world_size)):
        assert set(names) <= set(report["ran"])
        failed = {name: text for name, text in report["failures"].items() if name in names}
        assert not failed, f"rank {rank}: {len(failed)} cases failed, e.g. {next(iter(failed.items()))}"


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("layer", ["softmax_cross_entropy", "linear_cross_entropy"])
def test_float32_with_thousands_of_classes(results, world_size, layer):
    for rank, report in enumerate(results(world_size)):
        assert f"float32 {layer}" in report["ran"]
        assert f"float32 {layer}" not in report["failures"], report["failures"][f"float32 {layer}"]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_collectives_per_call(results, world_size):
    for report in results(world_size):
        c = report["collectives"]
        assert c["softmax_cross_entropy forward"] == {"all_gather": 1, "all_reduce": 2}
        assert c["softmax_cross_entropy backward"] == {}
        assert c["linear_cross_entropy forward"] == {"all_gather": 1, "all_reduce": 2}
        assert c["linear_cross_entropy backward"] == {"all_reduce": 1}


BAD_INPUTS = {
    "target outside the classes (softmax_cross_entropy)": ("IndexError", "Target 11 is out of bounds"),
    "target outside the classes (linear_cross_entropy)": ("IndexError", "Target 11 is out of bounds"),
    "negative target (softmax_cross_entropy)": ("IndexError", "Target -3 is out of bounds"),
    "class-weight block of the wrong size (softmax_cross_entropy)": ("RuntimeError", "rank 1 holds"),
    "class-weight block of the wrong size (linear_cross_entropy)": ("RuntimeError", "rank 1 holds"),
    "ranks disagree on the token count (softmax_cross_entropy)": ("ValueError", "the ranks hold [6, 7"),
    "ranks disagree on the token count (linear_cross_entropy)": ("ValueError", "the ranks hold [6, 7"),
}
# Refused by every rank on its own (its message names its own shapes).
LOCAL_BAD_INPUTS = {"spatial input (softmax_cross_entropy)": ("ValueError", "movedim(1, -1)")}


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_raises_the_same_exception_on_every_rank(results, world_size, name):
    kind, text = BAD_INPUTS[name]
    raised = [report["raised"][name] for report in results(world_size)]
    assert all(r is not None for r in raised), raised
    assert {r[0] for r in raised} == {kind}, raised
    assert len({r[1] for r in raised}) == 1, raised  # the same message everywhere
    assert text in raised[0][1]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("name", sorted(LOCAL_BAD_INPUTS))
def test_input_every_rank_refuses(results, world_size, name):
    kind, text = LOCAL_BAD_INPUTS[name]
    for raised in (report["raised"][name] for report in results(world_size)):
        assert raised is not None and raised[0] == kind and text in raised[1], raised


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_a_bad_argument_on_one_rank_is_named_on_the_others(results, world_size):
    raised = [report["raised"]["a bad option on one rank (linear_cross_entropy)"] for report in results(world_size)]
    assert raised[0][0] == "RuntimeError" and "label_smoothing" in raised[0][1]
    for other in raised[1:]:
        assert other[0] == "RuntimeError" and "rank 0 of the process group refused its arguments" in other[1]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_the_group_stays_in_step_after_bad_input(results, world_size):
    assert all(report["raised"]["good call afterwards"] is True for report in results(world_size))


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("module", ["SoftmaxCrossEntropyLoss", "LinearCrossEntropyLoss"])
def test_modules_take_a_process_group(results, world_size, module):
    for report in results(world_size):
        assert f"module {module}" in report["ran"]
        assert f"module {module}" not in report["failures"], report["failures"][f"module {module}"]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_one_dimensional_input(results, world_size):
    for report in results(world_size):
        assert "1-D input" in report["ran"]
        assert "1-D input" not in report["failures"], report["failures"]["1-D input"]


def test_torch_compile_gives_the_same_numbers(results):
    for report in results(2):
        assert "torch.compile" in report["ran"]
        assert "torch.compile" not in report["failures"], report["failures"]["torch.compile"]
