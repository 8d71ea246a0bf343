"""Shared by the scripts of this folder: import torch_manualbp (installed, else this checkout's in-place
build) and run its benchmark suite with results/ beside these scripts as the default output folder."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_suite(fixed_args):
    try:
        import torch_manualbp  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(HERE))
    from torch_manualbp.cli.bench import main

    return main(["--out", os.path.join(HERE, "results"), *fixed_args, *sys.argv[1:]])
