"""Flax NNX integration: N:M training ops for nnx.Linear, nnx.Conv and nnx.Einsum."""

from jaxnm.nnx.model import Optimizer, export_dense, sparsify_model, sparsity_summary
from jaxnm.nnx.ops import NMConv, NMDotGeneral, NMEinsum, NMMask, NMOp

__all__ = [
    "NMConv",
    "NMDotGeneral",
    "NMEinsum",
    "NMMask",
    "NMOp",
    "Optimizer",
    "export_dense",
    "sparsify_model",
    "sparsity_summary",
]
