"""Flax Linen integration: N:M training ops for Dense, DenseGeneral and Conv."""

from jaxnm.linen.layers import Conv, Dense, DenseGeneral, mask_collection
from jaxnm.linen.ops import MASKS, RNG_STREAM, NMConvGeneralDilated, NMDotGeneral

__all__ = [
    "MASKS",
    "RNG_STREAM",
    "Conv",
    "Dense",
    "DenseGeneral",
    "NMConvGeneralDilated",
    "NMDotGeneral",
    "mask_collection",
]
