"""The command line: `python -m torch_manualbp {demo,check,info,bench}`; `--help` on each.

Each command lives in its own module of this package with `add_arguments(parser)` and
`run(args) -> exit code`. Importing torch_manualbp imports nothing of it.
"""
import argparse
import importlib

COMMANDS = {
    "demo": ("torch_manualbp.cli.demo", "train a small classifier and check its gradients against autograd"),
    "check": ("torch_manualbp.cli.check", "gradcheck/gradgradcheck every op and option in float64 on a device"),
    "info": ("torch_manualbp.cli.info", "versions, compiled backends, SIMD level, threads and build flags"),
    "bench": ("torch_manualbp.cli.bench", "time the layers against their native-op equivalents"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m torch_manualbp",
        description="torch_manualbp: fused layers with hand-derived backward passes, and the tools to check them.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{demo,check,info,bench}", required=True)
    for name, (module_name, summary) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        module.add_arguments(command)
        command.set_defaults(module=module)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.module.run(args)
