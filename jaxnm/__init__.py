"""jaxnm: N:M fine-grained structured sparse training for JAX, optax and Flax."""

from jaxnm import ops
from jaxnm.masks import (
    count_transposable_tiles,
    is_nm,
    is_transposable_nm,
    mask_diversity,
    nm_mask,
    transposable_mask,
)
from jaxnm.ops import mvue

__version__ = "0.1.0"

__all__ = [
    "count_transposable_tiles",
    "is_nm",
    "is_transposable_nm",
    "mask_diversity",
    "mvue",
    "nm_mask",
    "ops",
    "transposable_mask",
]
