"""Builds torch_manualbp._C: one extension module, compiled with ninja through torch.utils.cpp_extension.

Layout of the build:
  * csrc/*.cpp                 op schemas, argument checks, GEMMs, dispatch registration (baseline flags)
  * csrc/cpu/*_kernel.cpp      the hand-written vectorized loops, compiled once per SIMD level
                               (DEFAULT, AVX2, AVX512 on x86-64) and chosen at run time from the CPU,
                               the way ATen builds its own kernels (see csrc/cpu/dispatch.h)
  * csrc/cuda/*.cu             CUDA kernels, built when a CUDA build of torch and a CUDA toolkit are present
                               (no GPU needed: build machines often have none)

Environment variables:
  FORCE_CUDA=1                 build the CUDA kernels or fail saying why; without it, a CUDA build of torch
                               with no CUDA toolkit, or one whose major version differs from torch's, gets
                               a CPU-only build and a warning naming both (cuda_build_choice.py)
  TORCH_MANUALBP_NO_CUDA=1     never build the CUDA kernels (wins over FORCE_CUDA)
  TORCH_CUDA_ARCH_LIST         CUDA architectures, e.g. "9.0" or "8.0;9.0+PTX"; unset: the visible GPUs', or
                               with none visible every architecture this torch was built for
  CUDA_HOME                    the CUDA toolkit root; found from nvcc when unset (wrapper scripts included)
  TORCH_MANUALBP_DEBUG=1       -O0 -g, frame pointers on
  TORCH_MANUALBP_SANITIZE=1    -fsanitize=address,undefined (with DEBUG flags)
  TORCH_MANUALBP_SIMD_LEVELS   e.g. "AVX2": compile only these levels besides DEFAULT (faster dev builds)
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
import cuda_build_choice  # noqa: E402  (the CUDA yes/no decision, beside this file)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_home_from_nvcc():
    """The toolkit root behind the nvcc on PATH, also when that nvcc is a wrapper script.

    torch.utils.cpp_extension guesses dirname(dirname(which("nvcc"))), which is /usr/local for a wrapper
    /usr/local/bin/nvcc that execs /usr/local/cuda-13.0/bin/nvcc. nvcc itself knows better: its dry run
    prints the toolkit's own directory as TOP=<root>/bin/.., whatever script called it.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    candidates = []
    try:
        out = subprocess.run(
            [nvcc, "-dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True, timeout=60
        )
        for line in (out.stdout + out.stderr).splitlines():
            match = re.search(r"\bTOP=(\S+)", line)
            if match:
                candidates.append(os.path.normpath(match.group(1)))
                break
    except (OSError, subprocess.SubprocessError):
        pass
    candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for candidate in candidates:
        if _is_cuda_toolkit(candidate):
            return candidate
    return None


def _is_cuda_toolkit(root):
    return os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
        os.path.join(root, "include", "cuda_runtime.h")
    )


if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and not _env_flag("TORCH_MANUALBP_NO_CUDA"):
    _found = _cuda_home_from_nvcc()
    if _found:
        os.environ["CUDA_HOME"] = _found

# Imported after CUDA_HOME is settled: torch.utils.cpp_extension reads it at import time.
import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _cuda_choice():
    """Whether to build the CUDA kernels, and why (cuda_build_choice.py)."""
    toolkit = CUDA_HOME if CUDA_HOME is not None and _is_cuda_toolkit(CUDA_HOME) else None
    choice = cuda_build_choice.choose(
        torch.__version__,
        torch.version.cuda,
        toolkit,
        cuda_build_choice.toolkit_version(os.path.join(toolkit, "bin", "nvcc")) if toolkit else None,
        force_cuda=_env_flag("FORCE_CUDA"),
        no_cuda=_env_flag("TORCH_MANUALBP_NO_CUDA"),
    )
    if choice.error:
        sys.exit("torch_manualbp: " + choice.error)
    if choice.warning:
        print("\n" + "=" * 100 + "\n" + choice.warning + "\n" + "=" * 100 + "\n", file=sys.stderr, flush=True)
    return choice


def _cuda_include_dirs():
    """The toolkit's headers, then those of the pip-installed CUDA libraries that torch depends on
    (nvidia/cu13/include: cusparse.h, cublas_v2.h, ... which ATen's CUDA headers include and a bare toolkit
    lacks). The toolkit comes first so that its own headers (cuda_runtime.h, ...) win over the copies there."""
    site_packages = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    dirs = [os.path.join(CUDA_HOME, "include")]
    dirs += sorted(glob.glob(os.path.join(site_packages, "nvidia", "*", "include")))
    return [d for d in dirs if os.path.isdir(d)]


def _default_cuda_arch_list():
    """TORCH_CUDA_ARCH_LIST when unset and no GPU is visible: the architectures this torch was built for
    (torch.utils.cpp_extension would otherwise fail on a GPU-less build machine), the newest also as PTX."""
    arches = [a.split("_")[1] for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    arches = [f"{a[:-1]}.{a[-1]}" for a in arches]
    return ";".join(arches[:-1] + [arches[-1] + "+PTX"]) if arches else None


IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
DEBUG = _env_flag("TORCH_MANUALBP_DEBUG") or _env_flag("TORCH_MANUALBP_SANITIZE")
SANITIZE = _env_flag("TORCH_MANUALBP_SANITIZE")
CUDA_CHOICE = _cuda_choice()
WITH_CUDA = CUDA_CHOICE.build
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
    _arch_list = _default_cuda_arch_list()
    if _arch_list:
        os.environ["TORCH_CUDA_ARCH_LIST"] = _arch_list

# SIMD levels of the kernel files, as ATen compiles its own (cmake/Codegen.cmake): name, flags.
SIMD_LEVELS = [("DEFAULT", [])]
if IS_X86:
    SIMD_LEVELS += [
        ("AVX2", ["-mavx2", "-mfma", "-mf16c"]),
        ("AVX512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]),
    ]

if os.environ.get("TORCH_MANUALBP_SIMD_LEVELS"):
    # Development shortcut: compile fewer levels (DEFAULT is always built; it is the fallback).
    _wanted = {"DEFAULT"} | {x.strip().upper() for x in os.environ["TORCH_MANUALBP_SIMD_LEVELS"].split(",")}
    SIMD_LEVELS = [(name, flags) for name, flags in SIMD_LEVELS if name in _wanted]

KERNEL_SOURCES = sorted(glob.glob(os.path.join("csrc", "cpu", "*_kernel.cpp")))
BASE_SOURCES = sorted(glob.glob(os.path.join("csrc", "*.cpp"))) + sorted(
    s for s in glob.glob(os.path.join("csrc", "cpu", "*.cpp")) if s not in KERNEL_SOURCES
)
CUDA_SOURCES = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))

opt = ["-O0", "-g", "-fno-omit-frame-pointer"] if DEBUG else ["-O3"]
# -fno-wrapv: Python's own CFLAGS carry -fwrapv, which defines signed overflow and so hides it from UBSan.
sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-wrapv"] if SANITIZE else []
cxx_flags = opt + sanitize + ["-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
cxx_flags += ["-DTORCH_MANUALBP_SIMD_LEVELS=" + ",".join(name for name, _ in SIMD_LEVELS)]
cxx_flags += ["-DTORCH_MANUALBP_HAVE_" + name for name, _ in SIMD_LEVELS]
if WITH_CUDA:
    cxx_flags.append("-DTORCH_MANUALBP_WITH_CUDA")
link_flags = ["-fopenmp"] + sanitize
# nvcc's optimization flags of both builds (tools/cuda_resources.py compiles the debug ones to check the
# kernels' registers against their __launch_bounds__), then the flags both share.
NVCC_OPT_FLAGS = {"release": ["-O3", "-lineinfo"], "debug": ["-O0", "-g", "-G"]}
nvcc_flags = NVCC_OPT_FLAGS["debug" if DEBUG else "release"] + ["-DTORCH_MANUALBP_WITH_CUDA"]


class SimdBuildExtension(BuildExtension):
    """BuildExtension that also compiles csrc/cpu/*_kernel.cpp once per SIMD level, with ninja."""

    def build_extension(self, ext):
        base_flags = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) else ext.extra_compile_args
        objects = []
        for name, flags in SIMD_LEVELS:
            objects += self.compiler.compile(
                KERNEL_SOURCES,
                output_dir=os.path.join(self.build_temp, "simd_" + name.lower()),
                include_dirs=ext.include_dirs,
                debug=self.debug,
                extra_postargs=list(base_flags) + flags + [f"-DCPU_CAPABILITY={name}", f"-DCPU_CAPABILITY_{name}"],
                depends=ext.depends,
            )
        # Link order matters: the base objects, then DEFAULT, then the SIMD levels. An inline function the
        # kernel files share with other code (c10::toString, exception classes, ...) exists in every level's
        # object; the linker keeps the first definition, so it is always the baseline copy, never one with
        # AVX instructions that would fault on an older CPU.
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


def extension():
    include_dirs = [os.path.join(ROOT, "csrc")]
    depends = glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
    depends += glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True)
    if WITH_CUDA:
        return CUDAExtension(
            "torch_manualbp._C",
            BASE_SOURCES + CUDA_SOURCES,
            include_dirs=include_dirs + _cuda_include_dirs(),
            depends=depends,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    return CppExtension(
        "torch_manualbp._C",
        BASE_SOURCES,
        include_dirs=include_dirs,
        depends=depends,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


def write_build_config():
    """torch_manualbp/_build_config.py: what this build was compiled with, for `python -m torch_manualbp info`."""
    config = {
        "torch_version": torch.__version__,
        "cuda": WITH_CUDA,
        "cuda_reason": CUDA_CHOICE.reason,
        "cuda_version": torch.version.cuda if WITH_CUDA else None,
        "cuda_home": CUDA_HOME if WITH_CUDA else None,
        "cuda_arch_list": (os.environ.get("TORCH_CUDA_ARCH_LIST") or "the visible GPUs'") if WITH_CUDA else None,
        "simd_levels": [name for name, _ in SIMD_LEVELS],
        "cxx_flags": cxx_flags,
        "link_flags": link_flags,
        "nvcc_flags": nvcc_flags if WITH_CUDA else None,
        "nvcc_opt_flags": NVCC_OPT_FLAGS if WITH_CUDA else None,
        "cuda_include_dirs": _cuda_include_dirs() if WITH_CUDA else None,
        "debug": DEBUG,
        "sanitize": SANITIZE,
    }
    with open(os.path.join(ROOT, "torch_manualbp", "_build_config.py"), "w") as f:
        f.write('"""Written by setup.py at build time."""\n')
        f.write(f"BUILD_CONFIG = {config!r}\n")


write_build_config()

# The C++ ABI ties the compiled module to the torch release it was compiled against: a wheel says so in its
# metadata (Requires-Dist: torch==X.Y.Z; any local variant, +cpu or +cu130, satisfies it), and
# torch_manualbp/_build_check.py refuses at import a build made for another release.
TORCH_RELEASE = torch.__version__.split("+")[0]

setup(
    install_requires=[f"torch=={TORCH_RELEASE}"],
    ext_modules=[extension()],
    cmdclass={"build_ext": SimdBuildExtension.with_options(use_ninja=True)},
    # One build folder per torch: `make test` (CPU torch) and `make cuda-build` (CUDA torch) build from the same
    # checkout, and each keeps its objects instead of recompiling the other's away.
    options={"build": {"build_base": os.path.join("build", "torch-" + torch.__version__)}},
)
