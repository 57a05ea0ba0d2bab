"""jaxnm: N:M fine-grained structured sparse training for JAX, optax and Flax."""

from jaxnm import convert, kernels, masks, ops
from jaxnm._apply_masks import apply_masks
from jaxnm._masks_module import make_callable as _make_masks_callable
from jaxnm._params import default_include, format_path, key_path_names
from jaxnm._sparsify import sparsify
from jaxnm._state import SparsifyState, current_masks, find_state
from jaxnm.compressed import CompressedNM, compress, decompress
from jaxnm.masks import (
    count_transposable_tiles,
    is_nm,
    is_transposable_nm,
    mask_diversity,
    nm_mask,
    transposable_mask,
)
from jaxnm.ops import MVUE, mvue

# `jaxnm.masks` is both the mask subpackage and `jaxnm.masks(opt_state)`.
_make_masks_callable(masks)

__version__ = "0.1.0"

__all__ = [
    "MVUE",
    "convert",
    "CompressedNM",
    "compress",
    "decompress",
    "kernels",
    "SparsifyState",
    "apply_masks",
    "current_masks",
    "default_include",
    "find_state",
    "format_path",
    "key_path_names",
    "masks",
    "sparsify",
    "count_transposable_tiles",
    "is_nm",
    "is_transposable_nm",
    "mask_diversity",
    "mvue",
    "nm_mask",
    "ops",
    "transposable_mask",
]
