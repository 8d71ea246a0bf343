"""Builds torch_manualbp._C: one extension module, compiled with ninja through torch.utils.cpp_extension.

Layout of the build:
  * csrc/*.cpp                 op schemas, argument checks, GEMMs, dispatch registration (baseline flags)
  * csrc/cpu/*_kernel.cpp      the hand-written vectorized loops, compiled once per SIMD level
                               (DEFAULT, AVX2, AVX512 on x86-64) and chosen at run time from the CPU,
                               the way ATen builds its own kernels (see csrc/cpu/dispatch.h)
  * csrc/cuda/*.cu             CUDA kernels, built when a CUDA build of torch and nvcc are present

Environment variables:
  FORCE_CUDA=1                 build the CUDA kernels even if detection says no
  TORCH_MANUALBP_NO_CUDA=1     never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST         CUDA architectures, honoured by torch.utils.cpp_extension
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


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_home_from_nvcc():
    """The toolkit root behind the nvcc on PATH, also when that nvcc is a wrapper script."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    try:
        # nvcc -dryrun prints the toolkit's own directory as TOP=... whatever wrapper called it.
        out = subprocess.run([nvcc, "-dryrun", "--version"], capture_output=True, text=True, timeout=30)
        for line in (out.stdout + out.stderr).splitlines():
            match = re.search(r"TOP=(\S+)", line)
            if match:
                candidates.insert(0, os.path.normpath(match.group(1).rstrip("/").removesuffix("/bin/..")))
    except (OSError, subprocess.SubprocessError):
        pass
    for candidate in candidates:
        if os.path.exists(os.path.join(candidate, "include", "cuda.h")) or os.path.exists(
            os.path.join(candidate, "targets")
        ):
            return candidate
    return None


if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    _found = _cuda_home_from_nvcc()
    if _found:
        os.environ["CUDA_HOME"] = _found

# Imported after CUDA_HOME is settled: torch.utils.cpp_extension reads it at import time.
import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if _env_flag("TORCH_MANUALBP_NO_CUDA"):
        return False
    if _env_flag("FORCE_CUDA"):
        return True
    # A build machine often has no GPU: a CUDA build of torch plus a toolkit is enough.
    return torch.version.cuda is not None and CUDA_HOME is not None


def _cuda_include_dirs():
    """Headers of the pip-installed CUDA libraries (cusparse.h, ...) that ATen's CUDA headers include."""
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "*", "include"))
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
DEBUG = _env_flag("TORCH_MANUALBP_DEBUG") or _env_flag("TORCH_MANUALBP_SANITIZE")
SANITIZE = _env_flag("TORCH_MANUALBP_SANITIZE")
WITH_CUDA = _want_cuda()

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
        ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


def extension():
    include_dirs = [os.path.join(ROOT, "csrc")]
    depends = glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
    if WITH_CUDA:
        nvcc_flags = ["-O3" if not DEBUG else "-O0", "-lineinfo", "-DTORCH_MANUALBP_WITH_CUDA"]
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
        "cuda_version": torch.version.cuda if WITH_CUDA else None,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
        "simd_levels": [name for name, _ in SIMD_LEVELS],
        "cxx_flags": cxx_flags,
        "link_flags": link_flags,
        "debug": DEBUG,
        "sanitize": SANITIZE,
    }
    with open(os.path.join(ROOT, "torch_manualbp", "_build_config.py"), "w") as f:
        f.write('"""Written by setup.py at build time."""\n')
        f.write(f"BUILD_CONFIG = {config!r}\n")


write_build_config()

setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": SimdBuildExtension.with_options(use_ninja=True)},
)
