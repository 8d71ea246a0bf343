"""Vocab-parallel linear_cross_entropy on the CPU (gloo): the per-step time (forward + backward) of one fixed
problem with its vocabulary split over 1, 2 and 4 processes, each with --threads threads (1 by default), and
the share of the step spent in the collectives (all_gather of the summaries, the two all_reduces of per-token
vectors, the backward's all_reduce of the input gradient), timed around each torch.distributed call. For
reference, the same problem unsharded (process_group=None) in one process.

    python benchmarks/vocab_parallel.py [--tokens 2048] [--features 512] [--vocabulary 32768] [--ranks 1 2 4]

The processes share the machine's cores: with R processes of T threads each, R x T should not exceed them
for the times to mean anything (and nothing else should run). The collective share includes the time a
rank waits for the slowest one.
"""
import argparse
import os
import socket
import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

try:
    import torch_manualbp  # noqa: F401
except ImportError:  # a source checkout with an in-place build
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLLECTIVES = ("all_reduce", "all_gather")


def _problem(args, rank, world_size):
    """The same full problem on every rank; this rank's block of the projection's rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.tokens, args.features, generator=g)
    W = torch.randn(args.vocabulary, args.features, generator=g) / args.features**0.5
    target = torch.randint(0, args.vocabulary, (args.tokens,), generator=g)
    base, extra = divmod(args.vocabulary, world_size)
    sizes = [base + (1 if r < extra else 0) for r in range(world_size)]
    start = sum(sizes[:rank])
    return x, W[start:start + sizes[rank]].clone(), target


def _timed_collectives(seconds):
    """dist's collectives wrapped so that their wall time adds to seconds[0]; returns the originals."""
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def timed(original):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[0] += time.perf_counter() - start
        return wrapper

    for name, original in originals.items():
        setattr(dist, name, timed(original))
    return originals


def _steps(args, x, W_block, target, group):
    from torch_manualbp.functional import linear_cross_entropy

    times = []
    for step in range(args.warmup + args.steps):
        x_step = x.clone().requires_grad_()
        W_step = W_block.clone().requires_grad_()
        if group is not None:
            dist.barrier(group=group)
        start = time.perf_counter()
        loss = linear_cross_entropy(x_step, W_step, target, process_group=group)
        loss.backward()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def _worker(rank, world_size, port, args, queue):
    torch.set_num_threads(args.threads)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=600))
    try:
        x, W_block, target = _problem(args, rank, world_size)
        collective_seconds = [0.0]
        _steps(args, x, W_block, target, dist.group.WORLD)  # warm up the group and the allocator
        originals = _timed_collectives(collective_seconds)
        try:
            times = _steps(args, x, W_block, target, dist.group.WORLD)
        finally:
            for name, original in originals.items():
                setattr(dist, name, original)
        queue.put((rank, statistics.median(times), collective_seconds[0] / (args.warmup + args.steps), sum(times) / len(times)))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(args, world_size):
    """(median step seconds of the slowest rank, collective share of the mean step)."""
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = mp.start_processes(_worker, args=(world_size, _free_port(), args, queue), nprocs=world_size,
                                   join=False, start_method="spawn")
    processes.join()
    rows = [queue.get() for _ in range(world_size)]
    median = max(row[1] for row in rows)
    share = max(row[2] / row[3] for row in rows)
    return median, share


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--vocabulary", type=int, default=32768)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    x, W, target = _problem(args, 0, 1)
    unsharded = statistics.median(_steps(args, x, W, target, None))
    print(f"linear_cross_entropy, {args.tokens} tokens x {args.features} features -> {args.vocabulary} classes, "
          f"float32, forward + backward, {args.threads} thread(s) per process, median of {args.steps} steps")
    print(f"\n{'processes':>9}  {'classes each':>12}  {'time per step':>13}  {'in collectives':>14}")
    print(f"{'1 (none)':>9}  {args.vocabulary:>12}  {unsharded * 1e3:>10.1f} ms  {'-':>14}")
    for world_size in args.ranks:
        median, share = run(args, world_size)
        print(f"{world_size:>9}  {-(-args.vocabulary // world_size):>12}  {median * 1e3:>10.1f} ms  {share:>13.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
