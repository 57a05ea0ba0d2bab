"""Flax NNX integration: N:M training ops for nnx.Linear, nnx.Conv and nnx.Einsum."""

from jaxnm.nnx.model import export_dense, sparsify_model
from jaxnm.nnx.ops import NMConv, NMDotGeneral, NMEinsum, NMOp

__all__ = ["NMConv", "NMDotGeneral", "NMEinsum", "NMOp", "export_dense", "sparsify_model"]
