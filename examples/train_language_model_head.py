"""A small language model trained on this repository's own text, twice from the same start: once with its output
layer's loss computed by torch_manualbp's fused linear_cross_entropy, once through F.linear + F.cross_entropy.

The model: a token embedding of the corpus vocabulary (tens of thousands of words and word runs, _corpus.py),
two causal transformer layers, and an output layer tied to the embedding (logits = h E^T). At 1024 tokens a
step and a vocabulary of that size the unfused head's logits, their softmax and their gradient are the
largest tensors of the step (each 1024 x vocabulary floats, printed at the start); the fused layer holds one
chunk of them.

Each variant runs in a process of its own, so that its peak memory (the high-water mark of its resident
memory, less what the process held before training) is its own. Prints the loss curves side by side, the
validation loss, the time per step and the peak memory; exits 1 if the two runs' losses drift apart by more
than float32 rounding explains.

    .venv/bin/python examples/train_language_model_head.py [--steps 60]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import _corpus
from torch_manualbp.functional import linear_cross_entropy

VARIANTS = {"fused": "torch_manualbp linear_cross_entropy", "unfused": "F.linear + F.cross_entropy"}
CONTEXT = 64
BATCH = 16
WIDTH = 128
REPORT_EVERY = 10
# Relative difference of the two runs' losses allowed at the end: the same model from the same start, two
# float32 summation orders, amplified by training.
LOSS_AGREEMENT = 2e-2


class TinyLanguageModel(nn.Module):
    def __init__(self, vocabulary_size, width=WIDTH, layers=2, heads=4):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, width)
        self.position = nn.Parameter(torch.zeros(CONTEXT, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def hidden(self, tokens):
        """(batch, time) token ids -> (batch, time, width) states, each seeing only the tokens up to itself."""
        steps = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(steps)
        states = self.embedding(tokens) + self.position[:steps]
        return self.norm(self.blocks(states, mask=mask, is_causal=True))

    def loss(self, tokens, targets, variant):
        states = self.hidden(tokens)
        head = self.embedding.weight  # tied: the logits are states @ E^T
        if variant == "fused":
            return linear_cross_entropy(states, head, targets)
        logits = F.linear(states, head)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def batches(ids, steps, seed):
    """`steps` batches of (tokens, next tokens), windows drawn at random from ids."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - CONTEXT - 1, (BATCH,), generator=generator)
        window = torch.stack([ids[s:s + CONTEXT + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


def train(variant, steps):
    """One run; returns its losses, validation loss, seconds per step and peak extra memory in bytes."""
    torch.manual_seed(0)
    vocabulary, ids = _corpus.load()
    split = int(ids.numel() * 0.9)
    train_ids, validation_ids = ids[:split], ids[split:]
    model = TinyLanguageModel(len(vocabulary))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    losses = []
    start = time.perf_counter()
    for tokens, targets in batches(train_ids, steps, seed=1):
        loss = model.loss(tokens, targets, variant)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = (time.perf_counter() - start) / max(steps, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    with torch.no_grad():
        validation = [model.loss(t, n, variant).item() for t, n in batches(validation_ids, 4, seed=2)]
    return dict(
        variant=variant, vocabulary=len(vocabulary), tokens=ids.numel(), losses=losses,
        validation=sum(validation) / len(validation), seconds_per_step=seconds, peak_bytes=peak,
    )


def run_in_child(variant, steps):
    command = [sys.executable, os.path.abspath(__file__), "--steps", str(steps), "--variant", variant]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant is not None:  # a child: one run, its results as one JSON line
        print(json.dumps(train(args.variant, args.steps)))
        return 0

    runs = {variant: run_in_child(variant, args.steps) for variant in VARIANTS}
    fused, unfused = runs["fused"], runs["unfused"]
    print(f"corpus: this repository's text, {fused['tokens']} tokens, vocabulary {fused['vocabulary']}")
    print(f"model: 2 causal transformer layers, width {WIDTH}, output layer tied to the embedding; "
          f"{BATCH} x {CONTEXT} tokens a step, AdamW")
    print(f"\n{'step':>6}  {'loss (fused)':>14}  {'loss (unfused)':>14}")
    for step in range(0, args.steps, REPORT_EVERY):
        print(f"{step + 1:>6}  {fused['losses'][step]:>14.4f}  {unfused['losses'][step]:>14.4f}")
    print(f"{args.steps:>6}  {fused['losses'][-1]:>14.4f}  {unfused['losses'][-1]:>14.4f}")
    print(f"\n{'head':<40} {'validation loss':>16} {'time per step':>14} {'peak memory':>12}")
    for run in (fused, unfused):
        print(f"{VARIANTS[run['variant']]:<40} {run['validation']:>16.4f} {run['seconds_per_step'] * 1e3:>11.1f} ms "
              f"{run['peak_bytes'] / 2**20:>8.0f} MiB")
    print(f"\nfused / unfused: time {fused['seconds_per_step'] / unfused['seconds_per_step']:.2f}x, "
          f"peak memory {fused['peak_bytes'] / max(unfused['peak_bytes'], 1):.2f}x")
    drift = abs(fused["losses"][-1] - unfused["losses"][-1]) / abs(unfused["losses"][-1])
    if drift > LOSS_AGREEMENT:
        print(f"FAILED: the final losses differ by {drift:.1%}")
        return 1
    print(f"the two runs' final losses agree within {drift:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
