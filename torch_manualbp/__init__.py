"""torch_manualbp: fused PyTorch layers whose backward passes are derived by hand and written as C++/CUDA kernels.

Layers: LinearSigmoid (y = sigmoid(x @ W.T + b)) and SoftmaxCrossEntropyLoss (softmax + cross-entropy,
every option of F.cross_entropy). Each is an nn.Module, a function in torch_manualbp.functional, and a
torch.autograd.Function whose forward and backward call ops registered under torch.ops.torch_manualbp.
"""
import torch  # noqa: F401  (first: _C links against it)

from . import _build_check  # noqa: F401  (refuses a build made for another torch, before _C is loaded)
from . import _C  # noqa: F401  (registers torch.ops.torch_manualbp.*)
from . import _fake  # noqa: F401  (fake kernels for torch.compile / export)
from . import _vmap  # noqa: F401  (batching rules for torch.vmap / torch.func)
from . import _autocast  # noqa: F401  (autocast kernels of the ops)
from . import functional
from .functions import LinearSigmoidFunction, SoftmaxCrossEntropyFunction
from .modules import LinearSigmoid, SoftmaxCrossEntropyLoss
from .version import __version__

__all__ = [
    "LinearSigmoid",
    "LinearSigmoidFunction",
    "SoftmaxCrossEntropyFunction",
    "SoftmaxCrossEntropyLoss",
    "functional",
    "__version__",
]
