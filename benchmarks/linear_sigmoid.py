"""LinearSigmoid: torch_manualbp vs native eager vs torch.compile vs the bare-GEMM floor, on the CPU.

    python benchmarks/linear_sigmoid.py [--dtype float32] [--threads 2] [--thp both] [--repeats 3]

Shapes (64, 256 -> 256) and (4096, 1024 -> 1024), forward and forward + backward; tables and JSON
in benchmarks/results/. Every option: python -m torch_manualbp bench --help.
"""
import sys

from _entry import run_suite

if __name__ == "__main__":
    sys.exit(run_suite(["--layer", "linear_sigmoid"]))
