"""jaxnm: N:M fine-grained structured sparse training for JAX, optax and Flax.

``import jaxnm`` loads JAX, optax and the core (masks, ops, the optax transform, the
compressed format and kernels). The Flax integrations ``jaxnm.nnx``, ``jaxnm.linen`` and
the Flax-based ``jaxnm.convert`` load on first attribute access (PEP 562 module
``__getattr__``), so ``import jaxnm`` does not import Flax.
"""

import importlib

from jaxnm import kernels, masks, ops
from jaxnm._apply_masks import apply_masks
from jaxnm._compress_params import compress_params
from jaxnm._params import KERNEL_VIEW, KernelView, default_include, format_path, key_path_names
from jaxnm._sparsify import SPARSIFY_STATIC_ARGS, sparsify
from jaxnm._state import SparsifyState, current_masks, find_state, find_states
from jaxnm._summary import SparsitySummary, SummaryRow, sparsity_summary
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

__version__ = "0.2.0"

_LAZY_SUBPACKAGES = ("convert", "linen", "nnx")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"jaxnm.{name}")  # also binds jaxnm.<name>
    raise AttributeError(f"module 'jaxnm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))


__all__ = [
    "KERNEL_VIEW",
    "KernelView",
    "MVUE",
    "CompressedNM",
    "SparsifyState",
    "apply_masks",
    "compress",
    "convert",
    "count_transposable_tiles",
    "current_masks",
    "decompress",
    "default_include",
    "find_state",
    "find_states",
    "SparsitySummary",
    "SummaryRow",
    "sparsity_summary",
    "compress_params",
    "SPARSIFY_STATIC_ARGS",
    "format_path",
    "is_nm",
    "is_transposable_nm",
    "kernels",
    "key_path_names",
    "linen",
    "mask_diversity",
    "masks",
    "mvue",
    "nm_mask",
    "nnx",
    "ops",
    "sparsify",
    "transposable_mask",
]
