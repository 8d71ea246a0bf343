"""torch_manualbp: fused PyTorch layers whose backward passes are derived by hand and written as C++/CUDA kernels.

Layers: LinearSigmoid (y = sigmoid(x @ W.T + b)), SoftmaxCrossEntropyLoss (softmax + cross-entropy, every
option of F.cross_entropy) and LinearCrossEntropyLoss (the output projection and the cross-entropy fused, the
logits never materialised). Each is an nn.Module, a function in torch_manualbp.functional, and a
torch.autograd.Function whose forward and backward call ops registered under torch.ops.torch_manualbp.
"""
import torch  # noqa: F401  (first: _C links against it)

from . import _build_check  # noqa: F401  (refuses a build made for another torch, before _C is loaded)
from . import _C  # noqa: F401  (registers torch.ops.torch_manualbp.*)
from . import layers  # noqa: F401  (autograd, fake kernels, batching rules and autocast of the ops)
from . import functional
from .layers import LinearCrossEntropyFunction, LinearSigmoidFunction, SoftmaxCrossEntropyFunction
from .modules import LinearCrossEntropyLoss, LinearSigmoid, SoftmaxCrossEntropyLoss
from .version import __version__

__all__ = [
    "LinearCrossEntropyFunction",
    "LinearCrossEntropyLoss",
    "LinearSigmoid",
    "LinearSigmoidFunction",
    "SoftmaxCrossEntropyFunction",
    "SoftmaxCrossEntropyLoss",
    "functional",
    "__version__",
]
