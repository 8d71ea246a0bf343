"""What the extension was compiled with agrees with what setup.py recorded (runs with or without a GPU)."""
import torch

from torch_manualbp import _C
from torch_manualbp._build_config import BUILD_CONFIG

OPS = [
    "linear_sigmoid_forward",
    "linear_sigmoid_backward",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "vocab_parallel_cross_entropy_statistics",
    "vocab_parallel_cross_entropy_gradient",
    "vocab_parallel_linear_cross_entropy_statistics",
    "vocab_parallel_linear_cross_entropy_gradient",
]


def test_built_with_cuda_agrees_with_build_config():
    assert _C.built_with_cuda() is BUILD_CONFIG["cuda"]


def test_cuda_kernels_registered_exactly_when_built_with_cuda():
    for op in OPS:
        name = f"torch_manualbp::{op}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA") is _C.built_with_cuda(), name


def test_cuda_build_recorded_its_toolchain():
    if not BUILD_CONFIG["cuda"]:
        assert BUILD_CONFIG["cuda_version"] is None
        return
    assert torch.version.cuda is not None, "a CUDA build of the extension runs with a CUDA build of torch"
    assert BUILD_CONFIG["cuda_version"] == torch.version.cuda
    assert BUILD_CONFIG["cuda_arch_list"]
