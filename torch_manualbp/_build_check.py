"""Refuses, before the compiled module (_C) is loaded, a build made against another torch than the running one.

PyTorch keeps no C++ ABI across releases: an extension compiled against one release and loaded under
another may fail with an undefined symbol, or load and corrupt memory. setup.py records the torch it
compiled against in _build_config.py; importing torch_manualbp compares it with the running torch:
  * the release (X.Y.Z; the local variant +cpu / +cu130 aside) must be the same;
  * a build with CUDA kernels needs a CUDA build of torch with the same CUDA major version (its kernels
    link against that CUDA runtime).
Setting TORCH_MANUALBP_SKIP_TORCH_CHECK=1 skips the check (at your own risk).
"""
import os

import torch

SKIP_VARIABLE = "TORCH_MANUALBP_SKIP_TORCH_CHECK"
_REBUILD = (
    "Rebuild torch_manualbp against the torch you run, from its source folder: "
    "pip install --no-build-isolation --no-deps --force-reinstall .  "
    "(or install the torch it was built for: pip install torch=={release}). "
    f"Set {SKIP_VARIABLE}=1 to import it anyway, at your own risk."
)


def _release(version):
    return version.split("+")[0]


def mismatch(build_config, torch_version, torch_cuda):
    """Why a build (its _build_config.BUILD_CONFIG) cannot run under this torch, or None."""
    built = build_config["torch_version"]
    if _release(built) != _release(torch_version):
        return (
            f"torch_manualbp was built against torch {built}, but torch {torch_version} is running; "
            "PyTorch keeps no C++ ABI across releases, so its compiled kernels cannot be loaded safely."
        )
    if build_config.get("cuda"):
        built_cuda = build_config["cuda_version"]
        if torch_cuda is None:
            return (
                f"torch_manualbp was built with CUDA kernels against torch {built} (CUDA {built_cuda}), but "
                f"torch {torch_version} is a CPU-only build."
            )
        if built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
            return (
                f"torch_manualbp was built with CUDA kernels against torch {built} (CUDA {built_cuda}), but "
                f"torch {torch_version} uses CUDA {torch_cuda}."
            )
    return None


def check():
    """Raises ImportError when this build does not match the running torch (see the module docstring)."""
    if os.environ.get(SKIP_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on"):
        return
    try:
        from ._build_config import BUILD_CONFIG
    except ImportError:  # a source tree never built by setup.py: nothing recorded to compare
        return
    problem = mismatch(BUILD_CONFIG, torch.__version__, torch.version.cuda)
    if problem is not None:
        raise ImportError(problem + " " + _REBUILD.format(release=_release(BUILD_CONFIG["torch_version"])))


check()
