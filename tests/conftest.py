import hashlib
import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

import torch_manualbp
from torch_manualbp import _C

# torch.compile caches compiled graphs on disk (/tmp/torchinductor_$USER) under a key that does not cover
# a custom op's schema: a graph compiled against an earlier build of _C would be reused with a changed op.
# One cache per build of the extension (its path, size and mtime) keeps reruns fast and builds apart.
_build_stamp = os.stat(_C.__file__)
_build_key = hashlib.sha1(f"{_C.__file__}:{_build_stamp.st_size}:{_build_stamp.st_mtime_ns}".encode()).hexdigest()[:16]
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torch_manualbp_inductor_{_build_key}"))


def pytest_configure(config):
    """Under `make test-simd` (tools/test_simd_levels.py) the run is for one forced SIMD level: refuse to run
    at another (a level the build lacks falls back to a lower one, which would test the wrong kernels)."""
    expected = os.environ.get("TORCH_MANUALBP_EXPECT_SIMD_LEVEL")
    if expected and _C.cpu_simd_level() != expected:
        raise pytest.UsageError(
            f"expected the CPU kernels to run at SIMD level {expected} "
            f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')}), but they run at {_C.cpu_simd_level()}"
        )


def pytest_report_header(config):
    return (
        f"torch_manualbp {torch_manualbp.__version__} from {os.path.dirname(torch_manualbp.__file__)}; "
        f"torch {torch.__version__}; CPU kernels {_C.cpu_simd_level()}, {_C.kernel_threads_used()} threads; "
        f"CUDA kernels built: {_C.built_with_cuda()}, GPU present: {torch.cuda.is_available()}"
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Hypothesis profiles of the property tests (tests/test_properties.py): "default" keeps `make test` fast;
# TORCH_MANUALBP_HYPOTHESIS_PROFILE=long searches much longer (minutes), "sanitize" is for `make sanitize`.
settings.register_profile(
    "default", max_examples=40, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("long", parent=settings.get_profile("default"), max_examples=3000)
settings.register_profile("sanitize", parent=settings.get_profile("default"), max_examples=15)
settings.load_profile(os.environ.get("TORCH_MANUALBP_HYPOTHESIS_PROFILE", "default"))
