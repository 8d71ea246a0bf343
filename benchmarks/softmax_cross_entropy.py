"""Softmax cross-entropy: torch_manualbp vs native eager F.cross_entropy vs torch.compile, on the CPU.

    python benchmarks/softmax_cross_entropy.py [--dtype float32] [--threads 2] [--thp both] [--repeats 3]

Shapes (8192, 1000), (4096, 32768) and (8, 21, 128, 128), forward and forward + backward; tables and
JSON in benchmarks/results/. Every option: python -m torch_manualbp bench --help.
"""
import sys

from _entry import run_suite

if __name__ == "__main__":
    sys.exit(run_suite(["--layer", "softmax_cross_entropy"]))
