"""DistributedDataParallel: 2 processes (gloo, loopback, bounded in time) train a model built from the
layers for a few SGD steps, each on its half of the global batch; their parameters then equal those of
one process trained on the whole batch (float64, so the only difference is the order of the sums)."""
import os
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import torch_manualbp

WORLD_SIZE = 2
STEPS = 4
GLOBAL_BATCH = 8
TIMEOUT_S = 120


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch_manualbp.LinearSigmoid(6, 8, dtype=torch.float64),
        torch_manualbp.LinearSigmoid(8, 4, dtype=torch.float64),
    )


def _global_batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    return (
        torch.randn(GLOBAL_BATCH, 6, dtype=torch.float64, generator=generator),
        torch.randint(0, 4, (GLOBAL_BATCH,), generator=generator),
    )


LOSS = torch_manualbp.SoftmaxCrossEntropyLoss(label_smoothing=0.1)  # 'mean': equal shards average exactly


def _train(model, rank=0, world_size=1):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    shard = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    for step in range(STEPS):
        input, target = _global_batch(step)
        optimizer.zero_grad()
        LOSS(model(input[shard]), target[shard]).backward()  # DDP averages the gradients of the shards
        optimizer.step()


def _worker(rank, port, result_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        model = DistributedDataParallel(_model())
        _train(model, rank, WORLD_SIZE)
        torch.save(model.module.state_dict(), os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ddp_matches_single_process(tmp_path):
    context = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # join() returns as soon as one process ends (raising if it failed); False while others run.
        while not context.join(timeout=max(deadline - time.monotonic(), 0)):
            assert time.monotonic() < deadline, f"the {WORLD_SIZE} processes did not finish in {TIMEOUT_S} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()

    single = _model()
    _train(single)
    expected = single.state_dict()
    assert not torch.equal(expected["0.weight"], _model().state_dict()["0.weight"])  # training moved them
    for rank in range(WORLD_SIZE):
        trained = torch.load(tmp_path / f"rank{rank}.pt")
        assert trained.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(trained[name], expected[name], rtol=1e-12, atol=1e-12)
