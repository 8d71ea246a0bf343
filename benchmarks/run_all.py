"""The whole suite (LinearSigmoid, softmax cross-entropy, linear cross-entropy), as `python -m torch_manualbp bench`.

    python benchmarks/run_all.py [--dtype float32] [--threads 2] [--thp both] [--repeats 3]

The numbers of the README (Performance) and benchmarks/results/ come from `python benchmarks/run_all.py --thp both`.
Every option: python -m torch_manualbp bench --help.
"""
import sys

from _entry import run_suite

if __name__ == "__main__":
    sys.exit(run_suite([]))
