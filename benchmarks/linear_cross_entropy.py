"""Linear cross-entropy (the output projection fused with the loss): torch_manualbp vs native eager
F.cross_entropy(F.linear(...)) vs torch.compile of it vs torch's chunked F.linear_cross_entropy, on the CPU,
with the three bare GEMMs as the floor; also torch_manualbp with half the targets ignored and its forward
under no_grad.

    python benchmarks/linear_cross_entropy.py [--dtype float32] [--dtype bfloat16] [--threads 2] [--thp both]

Shapes (2048 tokens, 512 -> 32768 classes) and (4096, 1024 -> 128256), forward and forward + backward, peak
memory of each contender in a fresh process; tables and JSON in benchmarks/results/. Every option:
python -m torch_manualbp bench --help.
"""
import sys

from _entry import run_suite

if __name__ == "__main__":
    sys.exit(run_suite(["--layer", "linear_cross_entropy"]))
