"""N:M sparse matmul kernels: Pallas GPU (Triton) and TPU (Mosaic) kernels, an XLA reference,
and the differentiable, dispatching ``nm_matmul``."""

from jaxnm.kernels.blocks import BlockSizes
from jaxnm.kernels.gpu import nm_matmul_gpu
from jaxnm.kernels.matmul import nm_matmul, select_backend
from jaxnm.kernels.reference import nm_matmul_reference
from jaxnm.kernels.tpu import nm_matmul_tpu

__all__ = [
    "BlockSizes",
    "nm_matmul",
    "nm_matmul_gpu",
    "nm_matmul_reference",
    "nm_matmul_tpu",
    "select_backend",
]
