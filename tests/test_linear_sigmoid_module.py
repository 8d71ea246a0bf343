"""LinearSigmoid as a drop-in for nn.Sequential(nn.Linear(in, out), nn.Sigmoid())."""
import io
import math

import pytest
import torch
from torch import nn

from torch_manualbp import LinearSigmoid


def native(in_features, out_features, bias=True):
    return nn.Sequential(nn.Linear(in_features, out_features, bias=bias), nn.Sigmoid())


@pytest.mark.parametrize("bias", [True, False])
def test_same_parameters_and_initialization_as_nn_linear(bias):
    torch.manual_seed(1)
    ours = LinearSigmoid(7, 3, bias=bias)
    torch.manual_seed(1)
    theirs = nn.Linear(7, 3, bias=bias)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for (_, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert p.shape == q.shape
        assert torch.equal(p, q)  # same init code, same random stream
    if not bias:
        assert ours.bias is None


def test_initialization_distribution():
    layer = LinearSigmoid(400, 300)
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) and the bias rule of nn.Linear both give 1/sqrt(fan_in)
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    # Uniform(-bound, bound) has standard deviation bound / sqrt(3).
    assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    assert abs(layer.weight.mean().item()) < 0.01 * bound


def test_loads_nn_linear_state_dict_and_matches():
    theirs = native(6, 4)
    ours = LinearSigmoid(6, 4)
    ours.load_state_dict(theirs[0].state_dict())
    x = torch.randn(10, 6)
    y = ours(x)
    y_ref = theirs(x)
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, theirs[0].weight.grad)
    torch.testing.assert_close(ours.bias.grad, theirs[0].bias.grad)


def test_trains_like_native_with_an_optimizer():
    theirs = native(4, 3)
    ours = LinearSigmoid(4, 3)
    ours.load_state_dict(theirs[0].state_dict())
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.5, momentum=0.9)
    x, target = torch.randn(32, 4), torch.rand(32, 3)
    for _ in range(20):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            ((model(x) - target) ** 2).mean().backward()
            opt.step()
    torch.testing.assert_close(ours.weight, theirs[0].weight)
    torch.testing.assert_close(ours.bias, theirs[0].bias)


def test_to_double_and_dtype_device_arguments():
    layer = LinearSigmoid(3, 2, dtype=torch.float64, device="cpu")
    assert layer.weight.dtype == torch.float64
    layer = LinearSigmoid(3, 2).double()
    assert layer(torch.randn(5, 3, dtype=torch.float64)).dtype == torch.float64
    layer = layer.to(torch.float32)
    assert layer.bias.dtype == torch.float32


def test_save_and_load():
    layer = LinearSigmoid(3, 2)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other = LinearSigmoid(3, 2)
    other.load_state_dict(torch.load(buffer))
    x = torch.randn(4, 3)
    torch.testing.assert_close(layer(x), other(x))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    whole = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(whole(x), layer(x))


def test_repr_and_reset_parameters():
    layer = LinearSigmoid(3, 2, bias=False)
    assert repr(layer) == "LinearSigmoid(in_features=3, out_features=2, bias=False)"
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight)


def test_in_a_sequential_model():
    model = nn.Sequential(LinearSigmoid(8, 16), LinearSigmoid(16, 4), nn.Linear(4, 1))
    x = torch.randn(5, 8)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
