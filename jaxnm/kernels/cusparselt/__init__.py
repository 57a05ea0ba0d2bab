"""EXPERIMENTAL cuSPARSELt backend: NVIDIA's 2:4 sparse tensor cores through the XLA FFI.

Built (``python -m jaxnm.kernels.cusparselt.build``), compiled deviceless for H100/H200 and
tested on CPU through a pure-JAX emulation of its layout; not yet run or measured on a GPU.
See ``docs/cusparselt.md``. The build itself is :mod:`jaxnm.kernels.cusparselt.build` (its
``build`` function and command line; not imported here, so that ``python -m`` runs it cleanly).
"""

from jaxnm.kernels.cusparselt.dot_general import cusparselt_dot_general
from jaxnm.kernels.cusparselt.layout import compressed_nbytes, emulate_matmul
from jaxnm.kernels.cusparselt.library import (
    CusparseLtUnavailableError,
    available,
    library_compressed_nbytes,
    load,
    version,
)
from jaxnm.kernels.cusparselt.matmul import cusparselt_support, nm_matmul_cusparselt
from jaxnm.kernels.cusparselt.sharding import sharded_cusparselt_linear
from jaxnm.kernels.cusparselt.sparse_mm import (
    CusparseLtMatrix,
    check_compute_capability,
    compress,
    matmul,
    search_algorithm,
)
from jaxnm.kernels.cusparselt.training import (
    AlgIds,
    CusparseLtWeight,
    WeightCompression,
    compress_weight,
    cusparselt_linear,
)

__all__ = [
    "AlgIds",
    "CusparseLtMatrix",
    "CusparseLtUnavailableError",
    "CusparseLtWeight",
    "WeightCompression",
    "available",
    "check_compute_capability",
    "compress",
    "compress_weight",
    "compressed_nbytes",
    "cusparselt_dot_general",
    "cusparselt_linear",
    "cusparselt_support",
    "emulate_matmul",
    "library_compressed_nbytes",
    "load",
    "matmul",
    "nm_matmul_cusparselt",
    "search_algorithm",
    "sharded_cusparselt_linear",
    "version",
]
