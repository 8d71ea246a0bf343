"""What differs between the torch releases this package supports, in one place.

Every other module takes these names from here instead of from torch, so that supporting an older (or a
newer) torch means changing this file only. Each name is torch's own where the running torch has it,
and a stand-in with the same behaviour where it does not:

  register_vmap           torch.library.register_vmap (torch >= 2.5); before, the same FuncTorchBatched
                          kernel that 2.5 registers, built from functorch's internals of 2.4
  is_autocast_available   torch.amp.is_autocast_available, answered without calling torch for "cpu" and
                          "cuda", which have autocast in every torch: torch.compile of older torch (2.4 to
                          2.8 at least) cannot trace that call and breaks the graph there
  check_nested_vmap       raises a clear error where a layer is applied under two or more vmap levels at
                          once (vmap of vmap) and the torch is older than 2.8, whose functorch fails under
                          nested vmap: 2.4 and 2.5 "savedLocalDispatchKeySet_ INTERNAL ASSERT FAILED", 2.6
                          "_add_batch_dim(): incompatible function arguments"; 2.8 passes, 2.7 was not
                          tried. Where the second level only wraps the backward (torch.func.hessian,
                          jacrev of jacrev) the layers cannot see it coming: torch's own error is raised
                          there, or the right values come out. One vmap level (vmap(grad) included) works
                          on every torch
"""
import torch
from torch._C._functorch import TransformType

__all__ = ["NESTED_VMAP_SUPPORTED", "check_nested_vmap", "is_autocast_available", "register_vmap"]

TORCH_RELEASE = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
NESTED_VMAP_SUPPORTED = TORCH_RELEASE >= (2, 8)
# A double backward that runs torch.func.vjp inside a graph being traced (torch.compile / AOT autograd of a
# backward of a backward): torch 2.4's functorch crashed the process there; refused below the release where
# nested functorch was found to work (see NESTED_VMAP_SUPPORTED).
TRACED_FUNCTORCH_SUPPORTED = NESTED_VMAP_SUPPORTED


def _register_vmap_before_2_5(qualname, func=None, /, *, lib=None):
    """torch.library.register_vmap of torch 2.5, for an op defined in C++ (a "namespace::name" string).

    torch 2.5 registers a FuncTorchBatched kernel that unwraps the vmapped tensors of the current level,
    calls the rule under the next level down and wraps its outputs again
    (torch/_functorch/autograd_function.py, custom_function_call_vmap_helper); torch 2.4 has every piece
    of it but the function itself, which this reproduces.
    """
    import torch.utils._pytree as pytree
    from torch._C._functorch import _add_batch_dim
    from torch._functorch.autograd_function import (
        VmapInfo,
        unwrap_batched,
        validate_vmap_returns_tuple_of_two_elements,
        wrap_outputs_maintaining_identity,
    )
    from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default

    def register(rule):
        def batched_kernel(keyset, *args, **kwargs):
            del keyset
            interpreter = retrieve_current_functorch_interpreter()
            level = interpreter.level()
            unwrapped, in_dims = unwrap_batched(args, level)
            if pytree.tree_all(lambda dim: dim is None, in_dims):
                # Nothing batched at this level: the op itself, one level down (as torch 2.5 does).
                with interpreter.lower():
                    return op(*args, **kwargs)
            info = VmapInfo(batch_size=interpreter.batch_size(), randomness=interpreter.randomness())
            with interpreter.lower():
                result = rule(info, in_dims, *unwrapped, **kwargs)
            validate_vmap_returns_tuple_of_two_elements(result)
            output, out_dims = result

            def wrap(tensor, out_dim):
                return tensor if out_dim is None else _add_batch_dim(tensor, out_dim, level)

            return wrap_outputs_maintaining_identity(output, unwrapped, args, wrap, out_dims=out_dims)

        library = lib if lib is not None else torch.library.Library(namespace, "FRAGMENT")
        library.impl(name, batched_kernel, "FuncTorchBatched", with_keyset=True)
        _keep_alive.append(library)
        return rule

    return register if func is None else register(func)


_keep_alive = []  # the Library objects of the stand-ins: a registration lasts as long as its Library

register_vmap = getattr(torch.library, "register_vmap", _register_vmap_before_2_5)


def is_autocast_available(device_type):
    """Whether torch.autocast exists for this device type (torch.amp.is_autocast_available)."""
    return device_type in ("cpu", "cuda") or torch.amp.is_autocast_available(device_type)


def check_nested_vmap():
    """Call under functorch transforms: RuntimeError where this torch cannot run the layers under nested vmap."""
    if NESTED_VMAP_SUPPORTED:
        return
    stack = torch._C._functorch.get_interpreter_stack() or []
    if sum(1 for interpreter in stack if interpreter.key() == TransformType.Vmap) >= 2:
        raise RuntimeError(
            "torch_manualbp: its layers under nested vmap (torch.func.hessian, jacrev or jacfwd of a jacobian, "
            f"vmap of vmap) need torch 2.8 or newer; torch {torch.__version__} fails inside torch.func there. "
            "One vmap level (vmap, jacrev, jacfwd, vmap(grad) for per-sample gradients) and grad, vjp, jvp work."
        )


def check_traced_functorch(what):
    """Call where torch.func runs inside a backward: RuntimeError where this torch cannot do that while tracing."""
    if TRACED_FUNCTORCH_SUPPORTED:
        return
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        raise RuntimeError(
            f"torch_manualbp: {what} under torch.compile or AOT tracing needs torch 2.8 or newer; torch "
            f"{torch.__version__} crashes inside torch.func there. It works in eager mode."
        )
