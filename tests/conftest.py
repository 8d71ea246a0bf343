import os

import pytest
import torch

import torch_manualbp


def pytest_report_header(config):
    from torch_manualbp import _C

    return (
        f"torch_manualbp {torch_manualbp.__version__} from {os.path.dirname(torch_manualbp.__file__)}; "
        f"torch {torch.__version__}; CPU kernels {_C.cpu_simd_level()}, {_C.kernel_threads_used()} threads; "
        f"CUDA kernels built: {_C.built_with_cuda()}, GPU present: {torch.cuda.is_available()}"
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
