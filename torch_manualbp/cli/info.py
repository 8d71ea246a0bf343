"""`python -m torch_manualbp info`: what this install is and how its kernels run here."""
import os
import platform
import sys

import torch

from .. import _C
from ..version import __version__

PACKAGE_DIR = os.path.dirname(os.path.dirname(__file__))  # torch_manualbp/, above cli/


def add_arguments(parser):
    del parser  # no options


def _build_config():
    try:
        from .._build_config import BUILD_CONFIG
    except ImportError:  # a source tree never built by setup.py
        return None
    return BUILD_CONFIG


def rows():
    """(label, value) pairs, in the order they are printed."""
    build = _build_config()
    cuda_built = _C.built_with_cuda()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    result = [
        ("torch_manualbp", f"{__version__} ({PACKAGE_DIR})"),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("python", f"{platform.python_version()} on {platform.machine()} {platform.system()}"),
        ("backends compiled", "CPU, CUDA" if cuda_built else "CPU"),
        ("CUDA kernels", ("built: " if cuda_built else "not built: ") + (build or {}).get("cuda_reason", "reason not recorded")),
        ("GPU", gpu),
        ("CPU kernels SIMD level", f"{_C.cpu_simd_level()} (ATen's own: {torch.backends.cpu.get_cpu_capability()})"),
        ("OpenMP", "yes" if _C.built_with_openmp() else "no (the CPU kernels run on one thread)"),
        ("torch threads", str(torch.get_num_threads())),
        ("threads the kernels used", f"{_C.kernel_threads_used()} (distinct threads in one at::parallel_for)"),
    ]
    if build is None:
        result.append(("build flags", "unknown (no torch_manualbp/_build_config.py: not built by setup.py)"))
        return result
    result += [
        ("built against torch", build["torch_version"]),
        ("SIMD levels compiled", ", ".join(build["simd_levels"])),
        ("CUDA version", build["cuda_version"] or "-"),
        ("CUDA arch list", build["cuda_arch_list"] or "-"),
        ("debug build", "yes" if build["debug"] else "no"),
        ("sanitizers", "yes" if build["sanitize"] else "no"),
        ("C++ flags", " ".join(build["cxx_flags"])),
        ("link flags", " ".join(build["link_flags"])),
    ]
    return result


def run(args):
    out = sys.stdout
    del args
    table = rows()
    width = max(len(label) for label, _ in table)
    for label, value in table:
        out.write(f"{label:<{width}}  {value}\n")
    return 0
