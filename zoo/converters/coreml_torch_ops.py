"""torch ops coremltools' torch frontend has no converter for, written with its own MIL builder.

Registered once, before zoo's first conversion, and only where coremltools has none of its own (a
newer coremltools that adds one keeps its own). Each is the op's definition in MIL, nothing more:
  - addcmul(input, tensor1, tensor2, value=1) = input + value · tensor1 · tensor2 (ConvNeXt-V2's GRN).
"""

from __future__ import annotations


def _addcmul(context, node):
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, promote_input_dtypes

    inputs = _get_inputs(context, node, expected=(3, 4))
    x, t1, t2 = promote_input_dtypes(inputs[:3])
    value = inputs[3].val if len(inputs) > 3 and inputs[3] is not None else 1.0
    product = mb.mul(x=t1, y=t2)
    if value is not None and float(value) != 1.0:
        product = mb.mul(x=product, y=float(value))
    context.add(mb.add(x=x, y=product, name=node.name))


_addcmul.__name__ = "addcmul"  # the registry keys converters by function name
MISSING_OPS = (_addcmul,)


def register_missing_ops() -> list[str]:
    """Register the converters coremltools lacks; returns the op names this call registered."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op

    added = []
    for func in MISSING_OPS:
        if _TORCH_OPS_REGISTRY.get_func(func.__name__) is None:
            register_torch_op(func)
            added.append(func.__name__)
    return added
