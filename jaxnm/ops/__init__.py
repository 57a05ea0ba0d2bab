"""Training ops: N:M matmul and convolution with transposed masks and MVUE gradient pruning."""

from jaxnm.ops._grad_prune import check_grad_sparsity
from jaxnm.ops._mvue import MVUE, mvue, mvue_with_mask
from jaxnm.ops._nm_conv import nm_conv, nm_conv_fn
from jaxnm.ops._nm_dot_general import nm_dot_general, nm_dot_general_fn, nm_linear

__all__ = [
    "MVUE",
    "check_grad_sparsity",
    "mvue",
    "mvue_with_mask",
    "nm_conv",
    "nm_conv_fn",
    "nm_dot_general",
    "nm_dot_general_fn",
    "nm_linear",
]
