"""Mask transforms and solvers: N:M masks along an axis and transposable N:M masks."""

from jaxnm.masks.certificate import Certificate, certify
from jaxnm.masks.diversity import count_transposable_tiles, mask_diversity
from jaxnm.masks.kernel import kernel_mask
from jaxnm.masks.nm import is_nm, nm_mask
from jaxnm.masks.solvers import SOLVERS, MaskMethod, Solver, resolve_solver
from jaxnm.masks.transposable import is_transposable_nm, transposable_mask

__all__ = [
    "SOLVERS",
    "Certificate",
    "MaskMethod",
    "Solver",
    "certify",
    "count_transposable_tiles",
    "is_nm",
    "is_transposable_nm",
    "kernel_mask",
    "mask_diversity",
    "nm_mask",
    "resolve_solver",
    "transposable_mask",
]
