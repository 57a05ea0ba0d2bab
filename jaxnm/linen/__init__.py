"""Flax Linen integration: N:M training ops for Dense, DenseGeneral and Conv."""

from jaxnm.linen.layers import Conv, Dense, DenseGeneral, variables
from jaxnm.linen.ops import DENSE, MASKS, RNG_STREAM, VIEW, NMConvGeneralDilated, NMDotGeneral
from jaxnm.linen.selection import include

__all__ = [
    "DENSE",
    "MASKS",
    "RNG_STREAM",
    "VIEW",
    "Conv",
    "Dense",
    "DenseGeneral",
    "NMConvGeneralDilated",
    "NMDotGeneral",
    "include",
    "variables",
]
