"""Data-parallel and fully-sharded training: 2 processes (gloo, loopback, bounded in time) train a model built
from every layer (LinearSigmoid, LinearCrossEntropyLoss, SoftmaxCrossEntropyLoss) for a few SGD steps, each on
its half of the global batch, once under DistributedDataParallel and once under FSDP2 (fully_shard); their
parameters then equal those of one process trained on the whole batch (float64, so the only difference is the
order of the sums)."""
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import torch_manualbp

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch before 2.6
    from torch.distributed._composable.fsdp import fully_shard

WORLD_SIZE = 2
STEPS = 4
GLOBAL_BATCH = 8
CLASSES, AUXILIARY_CLASSES = 37, 4
TIMEOUT_S = 240
MODES = ("ddp", "fsdp2")


class Net(torch.nn.Module):
    """A hidden LinearSigmoid feeding a LinearCrossEntropyLoss head and, through a second LinearSigmoid, a
    SoftmaxCrossEntropyLoss; the two 'mean' losses are added."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch_manualbp.LinearSigmoid(6, 8, dtype=torch.float64)
        self.head = torch_manualbp.LinearCrossEntropyLoss(8, CLASSES, bias=True, dtype=torch.float64, label_smoothing=0.1,
                                                          chunk_budget=CLASSES * 8 * 3)
        self.auxiliary = torch_manualbp.LinearSigmoid(8, AUXILIARY_CLASSES, dtype=torch.float64)
        self.auxiliary_loss = torch_manualbp.SoftmaxCrossEntropyLoss(label_smoothing=0.1)

    def forward(self, input, target, auxiliary_target):
        hidden = self.hidden(input)
        return self.head(hidden, target) + self.auxiliary_loss(self.auxiliary(hidden), auxiliary_target)


def _global_batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    return (
        torch.randn(GLOBAL_BATCH, 6, dtype=torch.float64, generator=generator),
        torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=generator),
        torch.randint(0, AUXILIARY_CLASSES, (GLOBAL_BATCH,), generator=generator),
    )


def _train(model, rank=0, world_size=1):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    shard = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    for step in range(STEPS):
        batch = [t[shard] for t in _global_batch(step)]
        optimizer.zero_grad()
        model(*batch).backward()  # both wrappers average the shards' gradients: equal shards, plain means
        optimizer.step()


def _full_state(model):
    """The state dict with every (sharded) DTensor gathered into a plain tensor."""
    return {name: value.full_tensor() if hasattr(value, "full_tensor") else value for name, value in model.state_dict().items()}


def _worker(rank, port, result_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        ddp = DistributedDataParallel(Net())
        _train(ddp, rank, WORLD_SIZE)
        torch.save(ddp.module.state_dict(), os.path.join(result_dir, f"ddp{rank}.pt"))

        sharded = Net()
        for layer in (sharded.hidden, sharded.head, sharded.auxiliary):
            fully_shard(layer)
        fully_shard(sharded)
        _train(sharded, rank, WORLD_SIZE)
        state = _full_state(sharded)
        torch.save(state, os.path.join(result_dir, f"fsdp2{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_workers(worker, args, world_size=WORLD_SIZE, timeout_s=TIMEOUT_S):
    """Spawns `world_size` processes of worker(rank, *args); fails if one fails or they outlast timeout_s."""
    context = mp.start_processes(worker, args=args, nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        # join() returns as soon as one process ends (raising if it failed); False while others run.
        while not context.join(timeout=max(deadline - time.monotonic(), 0)):
            assert time.monotonic() < deadline, f"the {world_size} processes did not finish in {timeout_s} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    result_dir = tmp_path_factory.mktemp("distributed")
    run_workers(_worker, (_free_port(), str(result_dir)))
    return result_dir


@pytest.mark.parametrize("mode", MODES)
def test_training_matches_single_process(trained, mode):
    single = Net()
    _train(single)
    expected = single.state_dict()
    assert not torch.equal(expected["hidden.weight"], Net().state_dict()["hidden.weight"])  # training moved them
    for rank in range(WORLD_SIZE):
        state = torch.load(trained / f"{mode}{rank}.pt")
        assert state.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(state[name], expected[name], rtol=1e-12, atol=1e-12)
