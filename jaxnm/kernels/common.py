"""Argument checks and buffer helpers shared by the Pallas N:M matmul kernels."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxnm.compressed import CompressedNM
from jaxnm.kernels.blocks import BlockSizes, check_block_sizes
from jaxnm.kernels.expand import RUN

_KERNEL_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def check_operands(x: jax.Array, c: CompressedNM) -> None:
    """Raises unless ``x (..., K)`` and ``c`` (a 2-D ``(K, N)`` weight grouped along ``K``) fit."""
    if not isinstance(c, CompressedNM):
        raise TypeError(f"`c` must be a jaxnm.CompressedNM, got {type(c).__name__}.")
    if len(c.shape) != 2 or c.axis != 0:
        raise ValueError(
            "`c` must be a 2-D (K, N) weight grouped along K (axis 0, i.e. -2), got shape "
            f"{tuple(c.shape)} with axis={c.axis}."
        )
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != c.shape[0]:
        raise ValueError(
            f"`x` has shape {jnp.shape(x)}: its last axis must equal K={c.shape[0]} of `c` "
            f"(dense shape {tuple(c.shape)})."
        )
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"`x` must have a floating dtype, got {jnp.result_type(x)}.")


def check_kernel_input(
    x: jax.Array,
    c: CompressedNM,
    support: Callable[[jax.Array, CompressedNM], str | None],
    *,
    subject: str,
    for_kernel: str = "",
) -> None:
    """The input checks of a 2-D N:M matmul kernel: :func:`check_operands`, ``x`` of rank 2,
    and ``support(x, c)`` (a reason string, or None when the kernel takes the input).

    Args:
      x: ``(T, K)`` activations.
      c: the compressed weight.
      support: e.g. :func:`kernel_support`.
      subject: who refuses an unsupported input, e.g. ``"The GPU N:M kernel"``.
      for_kernel: appended to the rank message, e.g. ``" for the GPU kernel"``.

    Raises:
      TypeError / ValueError: naming the argument and the reason.
    """
    check_operands(x, c)
    if jnp.ndim(x) != 2:
        raise ValueError(f"`x` must be 2-D (T, K){for_kernel}, got shape {jnp.shape(x)}.")
    why = support(x, c)
    if why:
        raise ValueError(f"{subject} does not support this input: {why}.")


def kernel_support(x: jax.Array, c: CompressedNM) -> str | None:
    """Why the Pallas kernels cannot take ``(x, c)``, or ``None`` when they can."""
    n, m = c.n, c.m
    if m < 2 or m & (m - 1) or n & (n - 1):
        return f"n={n} and m={m} must be powers of two with m >= 2"
    if (c.shape[0] * n // m) % RUN:
        return f"K*n/m (={c.shape[0] * n // m}) must be a multiple of {RUN}"
    dtype = jnp.result_type(x, c.dtype)
    if dtype not in _KERNEL_DTYPES:
        return f"dtype {dtype} is not one of float32, bfloat16, float16"
    return None


def round_up(x: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= x``."""
    return -(-x // multiple) * multiple


def pad_rows(x: jax.Array, rows: int) -> jax.Array:
    """Zero-pads axis 0 of ``x`` to ``rows`` rows."""
    return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def poison(shape: tuple[int, ...], dtype) -> jax.Array:
    """A NaN-filled buffer: passed as the kernel's aliased output, any tile the kernel does not
    write stays NaN (a debugging / testing aid)."""
    return jnp.full(shape, jnp.nan, dtype)


def kernel_blocks(
    x: jax.Array, c: CompressedNM, block_sizes: BlockSizes | None, backend: str
) -> BlockSizes:
    """Checks ``x (T, K)`` and ``c`` for the ``backend`` (``"gpu"``/``"tpu"``) Pallas kernel
    and returns its tiles: ``block_sizes``, or :meth:`BlockSizes.for_shape` when None."""
    name = backend.upper()
    check_kernel_input(
        x, c, kernel_support, subject=f"The {name} N:M kernel", for_kernel=f" for the {name} kernel"
    )
    (tokens, k), n_out = x.shape, c.shape[1]
    block = block_sizes or BlockSizes.for_shape(tokens, k, n_out, c.n, c.m, backend=backend)
    check_block_sizes(block, k, n_out, c.n, c.m, backend)
    return block
