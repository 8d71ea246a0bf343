"""Installing against the torch a user has: the CUDA yes/no decision of setup.py, the import-time refusal of a
build made for another torch (and its escape hatch), and what `python -m torch_manualbp info` says about it.

The oldest and the newest supported torch are exercised by building and testing against them (Makefile:
test-torch); the wheel by `make wheel-check`.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torch_manualbp
from torch_manualbp import _C, _build_check
from torch_manualbp._build_config import BUILD_CONFIG

ROOT = Path(__file__).resolve().parent.parent


def _load_cuda_build_choice():
    spec = importlib.util.spec_from_file_location("cuda_build_choice", ROOT / "cuda_build_choice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_build_choice = _load_cuda_build_choice()
choose = cuda_build_choice.choose


# ---- setup.py: CUDA kernels or not, and why --------------------------------------------------------
def test_cuda_built_when_torch_and_toolkit_agree():
    choice = choose("2.14.1+cu130", "13.0", "/usr/local/cuda-13.0", "13.0")
    assert choice.build and choice.warning is None and choice.error is None
    assert "CUDA 13.0" in choice.reason and "/usr/local/cuda-13.0" in choice.reason
    # torch.utils.cpp_extension accepts another minor version (it warns): so does the build.
    assert choose("2.14.1+cu130", "13.0", "/usr/local/cuda-13.2", "13.2").build


def test_toolkit_of_another_major_version_gives_a_cpu_build_with_a_warning_naming_both():
    choice = choose("2.7.1+cu126", "12.6", "/usr/local/cuda-13.0", "13.0")
    assert not choice.build and choice.error is None
    for fragment in ("CUDA 13.0", "CUDA 12.6", "torch 2.7.1+cu126", "/usr/local/cuda-13.0", "FORCE_CUDA=1", "CUDA_HOME"):
        assert fragment in choice.warning, fragment
    assert "CUDA 13.0" in choice.reason and "CUDA 12.6" in choice.reason


def test_cuda_torch_without_a_toolkit_gives_a_cpu_build_with_a_warning():
    choice = choose("2.14.1+cu130", "13.0", None, None)
    assert not choice.build and choice.error is None
    for fragment in ("no CUDA toolkit", "CUDA 13.0", "CUDA 13.x toolkit", "FORCE_CUDA=1", "CUDA_HOME"):
        assert fragment in choice.warning, fragment


def test_force_cuda_fails_with_the_reason():
    mismatch = choose("2.7.1+cu126", "12.6", "/usr/local/cuda-13.0", "13.0", force_cuda=True)
    assert not mismatch.build and mismatch.warning is None
    assert "FORCE_CUDA=1" in mismatch.error and "CUDA 13.0" in mismatch.error and "CUDA 12.6" in mismatch.error
    cpu_torch = choose("2.13.0+cpu", None, "/usr/local/cuda-13.0", "13.0", force_cuda=True)
    assert "torch 2.13.0+cpu is a CPU-only build" in cpu_torch.error


def test_cpu_torch_builds_cpu_only_without_a_warning():
    choice = choose("2.13.0+cpu", None, "/usr/local/cuda-13.0", "13.0")
    assert not choice.build and choice.warning is None and choice.error is None
    assert choice.reason == "torch 2.13.0+cpu is a CPU-only build"


def test_no_cuda_wins_over_everything():
    choice = choose("2.14.1+cu130", "13.0", "/usr/local/cuda-13.0", "13.0", force_cuda=True, no_cuda=True)
    assert not choice.build and choice.error is None and choice.warning is None
    assert "TORCH_MANUALBP_NO_CUDA=1" in choice.reason


def test_toolkit_version_read_from_nvcc(tmp_path):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.85'\n")
    nvcc.chmod(0o755)
    assert cuda_build_choice.toolkit_version(str(nvcc)) == "12.6"
    assert cuda_build_choice.toolkit_version(str(tmp_path / "missing")) is None


def test_this_build_recorded_why():
    assert BUILD_CONFIG["cuda"] is _C.built_with_cuda()
    assert BUILD_CONFIG["cuda_reason"]
    if torch.version.cuda is None:
        assert BUILD_CONFIG["cuda_reason"] == f"torch {torch.__version__} is a CPU-only build"


def test_info_says_which_backends_and_why(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch_manualbp", "info"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    verdict = "built" if _C.built_with_cuda() else "not built"
    assert re.search(rf"CUDA kernels\s+{verdict}: {re.escape(BUILD_CONFIG['cuda_reason'])}\n", result.stdout)
    assert re.search(rf"built against torch\s+{re.escape(BUILD_CONFIG['torch_version'])}\n", result.stdout)


# ---- import: a build made for another torch is refused before _C loads ------------------------------
def test_same_release_and_variant_pass():
    config = {"torch_version": "2.13.0+cpu", "cuda": False, "cuda_version": None}
    assert _build_check.mismatch(config, "2.13.0+cpu", None) is None
    assert _build_check.mismatch(config, "2.13.0", "13.0") is None  # a CPU-only build runs on any variant
    cuda_config = {"torch_version": "2.14.1+cu130", "cuda": True, "cuda_version": "13.0"}
    assert _build_check.mismatch(cuda_config, "2.14.1+cu130", "13.0") is None
    assert _build_check.mismatch(BUILD_CONFIG, torch.__version__, torch.version.cuda) is None  # this install


def test_another_release_is_refused_naming_both():
    config = {"torch_version": "2.13.0+cpu", "cuda": False, "cuda_version": None}
    for running in ("2.14.1+cu130", "2.13.1", "2.7.1+cu126"):
        problem = _build_check.mismatch(config, running, "12.6")
        assert "torch 2.13.0+cpu" in problem and f"torch {running}" in problem


def test_cuda_build_under_cpu_torch_or_another_cuda_major_is_refused():
    config = {"torch_version": "2.14.1+cu130", "cuda": True, "cuda_version": "13.0"}
    assert "CPU-only" in _build_check.mismatch(config, "2.14.1+cpu", None)
    problem = _build_check.mismatch(config, "2.14.1+cu126", "12.6")
    assert "CUDA 13.0" in problem and "CUDA 12.6" in problem


@pytest.fixture
def package_built_for_another_torch(tmp_path):
    """A copy of the installed package (compiled module included) whose _build_config.py says it was built
    against torch 2.3.0: what a user gets who upgrades or downgrades torch after installing."""
    package = Path(torch_manualbp.__file__).parent
    copy = tmp_path / "site" / "torch_manualbp"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    config = dict(BUILD_CONFIG, torch_version="2.3.0+cu121", cuda=False, cuda_version=None)
    (copy / "_build_config.py").write_text(f"BUILD_CONFIG = {config!r}\n")
    return copy.parent


_IMPORT_AND_REPORT = """
import sys
try:
    import torch_manualbp
except ImportError as error:
    print("ImportError:", error)
    print("_C loaded:", "torch_manualbp._C" in sys.modules)
else:
    import torch
    x, w = torch.randn(3, 4), torch.randn(2, 4)
    torch.testing.assert_close(torch_manualbp.functional.linear_sigmoid(x, w), torch.sigmoid(x @ w.T))
    print("imported from", torch_manualbp.__file__)
"""


def _import_in_subprocess(site, extra_env):
    env = {k: v for k, v in os.environ.items() if k != _build_check.SKIP_VARIABLE}
    env.update(extra_env, PYTHONPATH=str(site))
    return subprocess.run(
        [sys.executable, "-c", _IMPORT_AND_REPORT], cwd=site, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_of_a_build_for_another_torch_raises_before_loading_C(package_built_for_another_torch):
    result = _import_in_subprocess(package_built_for_another_torch, {})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ImportError: torch_manualbp was built against torch 2.3.0+cu121" in out
    assert f"but torch {torch.__version__} is running" in out
    assert "pip install --no-build-isolation --no-deps --force-reinstall ." in out
    assert "pip install torch==2.3.0" in out
    assert f"{_build_check.SKIP_VARIABLE}=1" in out
    assert "_C loaded: False" in out


def test_the_check_can_be_skipped(package_built_for_another_torch):
    result = _import_in_subprocess(package_built_for_another_torch, {_build_check.SKIP_VARIABLE: "1"})
    assert result.returncode == 0, result.stderr
    assert f"imported from {package_built_for_another_torch / 'torch_manualbp'}" in result.stdout
