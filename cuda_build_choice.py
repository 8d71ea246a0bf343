"""Whether setup.py builds the CUDA kernels, and why: a pure function of what the build machine has.

The CUDA kernels are optional. They are built when torch is a CUDA build and a CUDA toolkit of the same
major version is present (torch.utils.cpp_extension refuses to compile with any other: "The detected
CUDA version (13.0) mismatches the version that was used to compile PyTorch (12.1)"). Otherwise the
build is CPU-only: silently for a CPU-only torch (nothing CUDA was possible), with a warning that names
both versions when torch is a CUDA build (the user may have wanted the kernels), and as an error with
FORCE_CUDA=1. The reason is recorded in torch_manualbp/_build_config.py for `python -m torch_manualbp info`.

Kept apart from setup.py (which builds when it runs) so that tests can call it.
"""
import dataclasses
import re
import subprocess

HOW_TO_BUILD_CUDA = (
    "To build the CUDA kernels too, install a CUDA {major}.x toolkit, put its nvcc on PATH or set CUDA_HOME "
    "to its root, and rebuild with FORCE_CUDA=1 (which fails, saying why, instead of building CPU-only)."
)


@dataclasses.dataclass(frozen=True)
class CudaChoice:
    build: bool           # compile csrc/cuda/*.cu
    reason: str           # one sentence: why the CUDA kernels are (not) built
    warning: str = None   # for the build log, when a CUDA torch gets a CPU-only build
    error: str = None     # FORCE_CUDA=1 and no CUDA build possible: setup.py exits with this


def toolkit_version(nvcc):
    """The CUDA version "X.Y" that `nvcc --version` reports ("release 13.0"), None if it cannot be read."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def _major(version):
    return version.split(".")[0]


def choose(torch_version, torch_cuda, toolkit_root, toolkit_cuda, force_cuda=False, no_cuda=False):
    """torch_version: torch.__version__; torch_cuda: torch.version.cuda (None for a CPU-only torch);
    toolkit_root: the CUDA toolkit found (None: none); toolkit_cuda: its version "X.Y" (None: unknown)."""
    if no_cuda:
        return CudaChoice(False, "TORCH_MANUALBP_NO_CUDA=1 was set")
    if torch_cuda is None:
        reason = f"torch {torch_version} is a CPU-only build"
        error = f"FORCE_CUDA=1, but the CUDA kernels cannot be built: {reason}; install a CUDA build of torch"
        return CudaChoice(False, reason, error=error if force_cuda else None)
    if toolkit_root is None:
        problem = (
            f"torch {torch_version} was built with CUDA {torch_cuda}, but no CUDA toolkit was found "
            "(no nvcc on PATH, CUDA_HOME unset)"
        )
    elif toolkit_cuda is not None and _major(toolkit_cuda) != _major(torch_cuda):
        problem = (
            f"the CUDA toolkit at {toolkit_root} is CUDA {toolkit_cuda}, but torch {torch_version} was built "
            f"with CUDA {torch_cuda} (the major versions must match)"
        )
    else:
        found = f"CUDA {toolkit_cuda}" if toolkit_cuda else "CUDA of unknown version"
        return CudaChoice(True, f"torch {torch_version} was built with CUDA {torch_cuda}; toolkit: {found} at {toolkit_root}")
    how = HOW_TO_BUILD_CUDA.format(major=_major(torch_cuda))
    if force_cuda:
        return CudaChoice(False, problem, error=f"FORCE_CUDA=1, but the CUDA kernels cannot be built: {problem}. {how}")
    return CudaChoice(False, problem, warning=f"torch_manualbp: building the CPU kernels only: {problem}. {how}")
