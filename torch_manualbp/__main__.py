"""The command line: `python -m torch_manualbp {demo,check,info,bench}`; `--help` on each.

Each command lives in its own module with `add_arguments(parser)` and `run(args) -> exit code`.
"""
import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("torch_manualbp._demo", "train a small classifier and check its gradients against autograd"),
    "check": ("torch_manualbp._check", "gradcheck/gradgradcheck every op and option in float64 on a device"),
    "info": ("torch_manualbp._info", "versions, compiled backends, SIMD level, threads and build flags"),
    "bench": ("torch_manualbp.benchmarking", "time the layers against their native-op equivalents"),
}


def _bench_module():
    """torch_manualbp.benchmarking, or None while the package has none (its own import errors propagate)."""
    try:
        return importlib.import_module("torch_manualbp.benchmarking")
    except ModuleNotFoundError as error:
        if error.name != "torch_manualbp.benchmarking":
            raise
        return None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m torch_manualbp",
        description="torch_manualbp: fused layers with hand-derived backward passes, and the tools to check them.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{demo,check,info,bench}", required=True)
    for name, (module_name, summary) in COMMANDS.items():
        module = _bench_module() if name == "bench" else importlib.import_module(module_name)
        if module is None:
            summary += " (not yet available)"
        command = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        if module is not None:
            module.add_arguments(command)
        command.set_defaults(module=module)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.module is None:
        print(f"{args.command}: not yet available")
        return 0
    return args.module.run(args)


if __name__ == "__main__":
    sys.exit(main())
