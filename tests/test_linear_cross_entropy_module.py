"""LinearCrossEntropyLoss against torch's own nn.LinearCrossEntropyLoss: state_dict both ways, values, gradients,
training steps, .to(), constructor errors."""
import pytest
import torch
from torch import nn

from torch_manualbp import LinearCrossEntropyLoss

pytestmark = pytest.mark.skipif(
    not hasattr(nn, "LinearCrossEntropyLoss"), reason=f"torch {torch.__version__} has no nn.LinearCrossEntropyLoss"
)


def pair(**kwargs):
    """(ours, torch's) with the same parameters and options."""
    torch.manual_seed(0)
    ours = LinearCrossEntropyLoss(6, 11, dtype=torch.float64, **kwargs)
    theirs = nn.LinearCrossEntropyLoss(6, 11, dtype=torch.float64, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


CONFIGS = [
    dict(),
    dict(bias=True),
    dict(bias=True, reduction="sum", label_smoothing=0.2),
    dict(reduction="none", weight=torch.rand(11, dtype=torch.float64) + 0.5),
    dict(bias=True, weight=torch.rand(11, dtype=torch.float64) + 0.5, label_smoothing=0.1, ignore_index=3),
]


# ignore_index applies to class indices only.
CASES = [(c, k) for c in CONFIGS for k in ("index", "probability") if k == "index" or "ignore_index" not in c]


@pytest.mark.parametrize("config,kind", CASES, ids=[f"{i}-{k}" for i, (_, k) in enumerate(CASES)])
def test_values_and_gradients_match_torchs_module(config, kind):
    ours, theirs = pair(**config)
    x = torch.randn(9, 6, dtype=torch.float64)
    target = torch.randint(0, 11, (9,)) if kind == "index" else torch.rand(9, 11, dtype=torch.float64)
    results = []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        loss = module(xi, target)
        grad_output = torch.linspace(-1, 2, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        params = [p for p in module.parameters()]
        results.append((loss.detach(), *torch.autograd.grad(loss, [xi, *params], grad_output)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_state_dict_loads_both_ways_with_the_same_keys():
    weight = torch.rand(11, dtype=torch.float64)
    ours, theirs = pair(bias=True, weight=weight)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "linear.weight", "linear.bias"]
    torch.manual_seed(5)
    other = nn.LinearCrossEntropyLoss(6, 11, bias=True, dtype=torch.float64, weight=weight)
    ours.load_state_dict(other.state_dict())
    for a, b in zip(ours.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    theirs.load_state_dict(ours.state_dict())


def test_training_steps_follow_torchs_module():
    ours, theirs = pair(bias=True, label_smoothing=0.1)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (ours, theirs)]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(16, 6, dtype=torch.float64, generator=g)
        t = torch.randint(0, 11, (16,), generator=g)
        for module, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            module(x, t).backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b)


def test_to_moves_the_class_weight_and_the_chunk_budget_is_an_attribute():
    module = LinearCrossEntropyLoss(4, 7, weight=torch.rand(7))
    module.to(torch.float64)
    assert module.weight.dtype == module.linear.weight.dtype == torch.float64
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 7, (5,))
    whole = module(x, t)
    module.chunk_budget = 1
    torch.testing.assert_close(module(x, t), whole)
    assert "num_classes=7" in repr(module) and "softcap=None" in repr(module)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(weight=torch.rand(3)), "expected weight shape to be \\(7,\\), got \\(3,\\)"),
        (dict(label_smoothing=1.5), "expected label_smoothing to be in range \\[0, 1\\], got 1.5"),
    ],
)
def test_constructor_errors_are_torchs(kwargs, message):
    for cls in (LinearCrossEntropyLoss, nn.LinearCrossEntropyLoss):
        with pytest.raises(RuntimeError, match=message):
            cls(4, 7, **kwargs)
