"""The language model of train_language_model_head.py with its vocabulary split over the processes
(vocab-parallel): each process holds a contiguous block of the rows of the tied embedding, the output layer's
weight; torch_manualbp's linear_cross_entropy(..., process_group=...) computes the loss of the whole vocabulary
from the processes' blocks with three collectives on per-token vectors, never gathering logits. The rest of the
model (two causal transformer layers, width 128) is replicated: every process sees the same tokens, and the
input gradient the loss returns is the full one on every process, so the replicas stay equal without a wrapper.

The embedding lookup is vocab-parallel too: each process looks up the tokens of its block (zeros for the
others) and an all_reduce sums the lookups (its backward: the identity, each process keeping its block's rows).

Prints each process's memory for the head (its block of the weight, the gradient and AdamW's two moments),
the loss curve, and the same steps run in one process with the whole vocabulary (the fused head of the
single-process example): exits 1 if the losses differ beyond float32 rounding.

    torchrun --nproc-per-node 2 examples/train_language_model_head_vocab_parallel.py [--steps 20]

gloo on the CPU; with CUDA devices and NCCL the same code runs one process per GPU (--backend nccl).
"""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _corpus  # noqa: E402
import train_language_model_head as single  # noqa: E402
from torch_manualbp.functional import linear_cross_entropy  # noqa: E402

# Relative difference allowed between the sharded and the single-process losses at every step: the same
# model from the same start, float32 sums in another order.
LOSS_AGREEMENT = 1e-4


def vocabulary_blocks(vocabulary_size, world_size):
    """Contiguous blocks, in rank order, as even as the vocabulary allows (the first ones one row longer)."""
    base, extra = divmod(vocabulary_size, world_size)
    sizes = [base + (1 if rank < extra else 0) for rank in range(world_size)]
    starts = [sum(sizes[:rank]) for rank in range(world_size)]
    return list(zip(starts, sizes))


class _SumOverRanks(torch.autograd.Function):
    """Forward: the sum over the group's ranks (all_reduce). Backward: the identity (every rank runs the same
    replicated model on the sum, so each receives the whole upstream gradient)."""

    @staticmethod
    def forward(ctx, value, group):
        value = value.clone()
        dist.all_reduce(value, group=group)
        return value

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class VocabParallelTinyLanguageModel(torch.nn.Module):
    """single.TinyLanguageModel with the embedding (and so the tied output layer) split by rows over the group."""

    def __init__(self, full, start, size, group):
        super().__init__()
        self.start, self.size, self.group = start, size, group
        self.embedding_block = torch.nn.Parameter(full.embedding.weight.detach()[start:start + size].clone())
        self.position, self.blocks, self.norm = full.position, full.blocks, full.norm

    def hidden(self, tokens):
        steps = tokens.shape[1]
        local = tokens - self.start
        here = (local >= 0) & (local < self.size)
        looked_up = F.embedding(torch.where(here, local, 0), self.embedding_block) * here.unsqueeze(-1)
        states = _SumOverRanks.apply(looked_up, self.group) + self.position[:steps]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(steps)
        return self.norm(self.blocks(states, mask=mask, is_causal=True))

    def loss(self, tokens, targets):
        return linear_cross_entropy(self.hidden(tokens), self.embedding_block, targets, process_group=self.group)


def head_bytes(rows, width, element_size=4):
    """The output layer's weight, its gradient and AdamW's two moments."""
    return 4 * rows * width * element_size


def train(model_loss, parameters, steps, train_ids):
    optimizer = torch.optim.AdamW(parameters, lr=3e-3)
    losses = []
    start = time.perf_counter()
    for tokens, targets in single.batches(train_ids, steps, seed=1):
        loss = model_loss(tokens, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, (time.perf_counter() - start) / max(steps, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--backend", default="gloo")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group(args.backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD
    try:
        vocabulary, ids = _corpus.load()
        train_ids = ids[: int(ids.numel() * 0.9)]
        V = len(vocabulary)
        start, size = vocabulary_blocks(V, world_size)[rank]

        torch.manual_seed(0)  # the single-process example's model, then this rank's block of its embedding
        model = VocabParallelTinyLanguageModel(single.TinyLanguageModel(V), start, size, group)
        losses, seconds = train(model.loss, model.parameters(), args.steps, train_ids)
        rows = [None] * world_size
        dist.all_gather_object(rows, (rank, start, size, head_bytes(size, single.WIDTH), seconds))

        if rank != 0:
            return 0
        torch.manual_seed(0)
        reference = single.TinyLanguageModel(V)
        reference_losses, reference_seconds = train(
            lambda tokens, targets: reference.loss(tokens, targets, "fused"), reference.parameters(), args.steps,
            train_ids,
        )
        print(f"corpus: this repository's text, vocabulary {V}, split over {world_size} processes ({args.backend})")
        print(f"model: {single.BATCH} x {single.CONTEXT} tokens a step, width {single.WIDTH}, output layer tied to the "
              "embedding, AdamW")
        print(f"\n{'process':<10} {'classes':>17} {'head memory':>12} {'time per step':>14}")
        for r, first, count, memory, step_seconds in rows:
            print(f"rank {r:<5} {first:>7} .. {first + count - 1:<7} {memory / 2**20:>8.1f} MiB {step_seconds * 1e3:>11.1f} ms")
        print(f"{'1 process':<10} {0:>7} .. {V - 1:<7} {head_bytes(V, single.WIDTH) / 2**20:>8.1f} MiB "
              f"{reference_seconds * 1e3:>11.1f} ms")
        print(f"\n{'step':>6}  {'loss (vocab-parallel)':>22}  {'loss (1 process)':>17}")
        for step, (sharded, whole) in enumerate(zip(losses, reference_losses), 1):
            print(f"{step:>6}  {sharded:>22.6f}  {whole:>17.6f}")
        drift = max(abs(a - b) / abs(b) for a, b in zip(losses, reference_losses))
        if drift > LOSS_AGREEMENT:
            print(f"FAILED: the vocab-parallel and single-process losses differ by {drift:.2e} (relative)")
            return 1
        print(f"the vocab-parallel and single-process losses agree within {drift:.1e} (relative) at every step")
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
