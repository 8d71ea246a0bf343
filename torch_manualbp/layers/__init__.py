"""The layers, one module each, holding everything Python about one layer: its autograd.Functions
(forward, setup_context, backward, jvp; the backward op's own Function for double backward), and the
registrations on its ops: register_autograd, register_fake, register_vmap and the autocast kernels.
What they share is in _common.py.

Each Function's forward and backward call the C++ ops (torch.ops.torch_manualbp); the same backward is
registered on the forward op with torch.library.register_autograd, so that the op called directly
(torch.compile, opcheck, export) and the Function give one gradient. The backward ops are wrapped in
Functions of their own, registered on the backward ops the same way: their derivatives (double backward)
and tangents (forward-mode AD) are written out from the same formulas as the kernels, in differentiable
torch ops, so that higher derivatives exist as well.

torch.func: every Function has a separate setup_context, generate_vmap_rule=True (forward, backward and
jvp run under vmap, where the ops have batching rules) and a jvp (forward-mode AD: jvp, jacfwd,
hessian = jacfwd(jacrev)).

Importing this package registers everything (the ops themselves come from torch_manualbp._C).
"""
from . import linear_cross_entropy, linear_sigmoid, softmax_cross_entropy  # noqa: F401  (registrations on the ops)
from . import vocab_parallel  # noqa: F401  (the vocab-parallel losses; fake kernels of their ops)
from .linear_cross_entropy import LinearCrossEntropyFunction
from .linear_sigmoid import LinearSigmoidFunction
from .softmax_cross_entropy import SoftmaxCrossEntropyFunction

__all__ = ["LinearCrossEntropyFunction", "LinearSigmoidFunction", "SoftmaxCrossEntropyFunction"]
