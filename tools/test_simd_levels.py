"""Runs test files at every SIMD level of the CPU kernels that this build compiled and this CPU can execute,
other than the level they run at natively (`make test` covers that one): `make test-simd`.

    python tools/test_simd_levels.py [pytest arguments: files, -m, -k, ...]     (run from tests/)

Each csrc/cpu/*_kernel.cpp is compiled once per level (DEFAULT, AVX2, AVX512 on x86-64) and the level ATen
runs at picks one (csrc/cpu/dispatch.h). A machine runs only its own level unless told otherwise, so code of
the other levels (the AVX2 exponential of csrc/cpu/fast_exp.h on an AVX-512 machine, the scalar loops
everywhere) would go untested; ATEN_CPU_CAPABILITY=default|avx2|avx512 forces a level. A level the CPU cannot
execute is skipped, with the reason printed: forcing it would stop the process with an illegal instruction.

Every pytest run names its level in a banner and in pytest's header (conftest.py), and checks that the
kernels really run at it (TORCH_MANUALBP_EXPECT_SIMD_LEVEL, conftest.py). Exits 1 if any run failed.

Each level's run gets an empty TorchInductor cache of its own (TORCHINDUCTOR_CACHE_DIR, removed afterwards):
torch.compile's on-disk cache does not key its compiled C++ on ATEN_CPU_CAPABILITY, so a run at AVX2 reusing
what a run at AVX512 compiled computes wrong numbers (vectors of the wrong width), and one at DEFAULT fails to
compile (seen with torch 2.13).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

LEVELS = ("DEFAULT", "AVX2", "AVX512")  # lowest first; the names of csrc/cpu/dispatch.h


def _rank(capability):
    """The kernel level an ATen capability string allows (e.g. "AVX512", "AVX512_VNNI", "AVX2", "DEFAULT";
    another architecture's names, such as "SVE256", allow DEFAULT only)."""
    capability = capability.upper()
    for index in reversed(range(len(LEVELS))):
        if capability.startswith(LEVELS[index]):
            return index
    return 0


def _native():
    """(ATen's capability, the kernels' level, the levels compiled), asked of a process that sets no level."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    code = (
        "import torch, torch_manualbp\n"
        "from torch_manualbp import _C\n"
        "from torch_manualbp._build_config import BUILD_CONFIG\n"
        "print(torch.backends.cpu.get_cpu_capability()); print(_C.cpu_simd_level())\n"
        "print(','.join(BUILD_CONFIG['simd_levels']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    capability, kernel_level, compiled = out.stdout.split()[-3:]
    return capability, kernel_level, compiled.split(",")


def main(pytest_args):
    capability, native_level, compiled = _native()
    cpu_rank = _rank(capability)
    print(f"SIMD levels: this CPU executes up to {LEVELS[cpu_rank]} (ATen: {capability}); the kernels run at "
          f"{native_level} natively; compiled: {', '.join(compiled)}")
    results = []
    for rank, level in enumerate(LEVELS):
        if level not in compiled:
            results.append((level, "skipped", f"not compiled in this build (compiled: {', '.join(compiled)})", 0.0))
        elif rank > cpu_rank:
            results.append((level, "skipped", f"this CPU cannot execute it (its highest level is {LEVELS[cpu_rank]})",
                            0.0))
        elif level == native_level:
            results.append((level, "skipped", "the native level: `make test` runs it", 0.0))
        else:
            print(f"\n==== SIMD level {level}: ATEN_CPU_CAPABILITY={level.lower()} ====", flush=True)
            inductor_cache = tempfile.mkdtemp(prefix=f"torchinductor-{level.lower()}-")
            env = dict(os.environ, ATEN_CPU_CAPABILITY=level.lower(), TORCH_MANUALBP_EXPECT_SIMD_LEVEL=level,
                       TORCHINDUCTOR_CACHE_DIR=inductor_cache)
            start = time.monotonic()
            try:
                code = subprocess.run([sys.executable, "-m", "pytest", *pytest_args], env=env).returncode
            finally:
                shutil.rmtree(inductor_cache, ignore_errors=True)
            results.append((level, "passed" if code == 0 else f"FAILED (pytest exit code {code})", "",
                            time.monotonic() - start))
    print("\nSIMD levels:")
    for level, outcome, reason, seconds in results:
        timing = f" in {seconds:.0f} s" if seconds else ""
        print(f"  {level:8} {outcome}{timing}{': ' + reason if reason else ''}")
    return 1 if any(outcome.startswith("FAILED") for _, outcome, _, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
