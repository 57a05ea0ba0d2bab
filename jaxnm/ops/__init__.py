"""Training ops: N:M matmul and convolution with transposed masks and MVUE gradient pruning."""

from jaxnm.ops._grad_prune import check_grad_sparsity
from jaxnm.ops._mvue import MVUE, approx_2_4_inclusion, mvue, mvue_uniforms, mvue_with_mask
from jaxnm.ops._nm_conv import nm_conv, nm_conv_fn
from jaxnm.ops._nm_dot_general import (
    OP_BACKENDS,
    OpBackend,
    nm_dot_general,
    nm_dot_general_fn,
    nm_linear,
)

__all__ = [
    "MVUE",
    "OP_BACKENDS",
    "OpBackend",
    "approx_2_4_inclusion",
    "check_grad_sparsity",
    "mvue",
    "mvue_uniforms",
    "mvue_with_mask",
    "nm_conv",
    "nm_conv_fn",
    "nm_dot_general",
    "nm_dot_general_fn",
    "nm_linear",
]
