"""Argument and array checks shared by every public entry point.

All checks run eagerly on static metadata (shapes, dtypes, Python ints), so they work
unchanged under ``jax.jit`` and ``jax.vmap`` and fail before tracing with a message
that names the argument and the value received.
"""

from __future__ import annotations

import operator

import jax.numpy as jnp


def check_nm(n: int, m: int) -> tuple[int, int]:
    """Validates an N:M pair (keep ``n`` of every ``m``) and returns it as Python ints."""
    n = _as_static_int(n, "n")
    m = _as_static_int(m, "m")
    if m <= 0:
        raise ValueError(f"`m` (={m}) must be a positive group size.")
    if not 0 < n <= m:
        raise ValueError(f"`n` (={n}) must satisfy 0 < n <= m (m={m}).")
    return n, m


def check_int(value, name: str, *, minimum: int) -> int:
    """Validates a static Python int setting ``>= minimum`` and returns it."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a Python int, got {value!r}.") from None
    if value < minimum:
        raise ValueError(f"`{name}` (={value}) must be >= {minimum}.")
    return value


def _as_static_int(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"`{name}` must be a static Python int, got {value!r} of type {type(value).__name__}."
        ) from None


def check_floating(x, name: str = "w") -> None:
    """Raises ``ValueError`` unless ``x`` has a floating-point dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must have a floating dtype (float32, bfloat16, float16, ...), "
            f"got {dtype} with shape {jnp.shape(x)}."
        )


def normalize_axis(axis: int, ndim: int, name: str = "axis") -> int:
    """Returns ``axis`` as a non-negative index into an array of rank ``ndim``."""
    axis = _as_static_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(f"`{name}` (={axis}) is out of range for an array of rank {ndim}.")
    return axis % ndim


def check_group_axis(shape: tuple[int, ...], axis: int, m: int, name: str = "w") -> int:
    """Checks that ``m`` divides ``shape[axis]``; returns the normalized axis."""
    if len(shape) == 0:
        raise ValueError(f"`{name}` must have rank >= 1 for N:M groups, got shape {shape}.")
    axis = normalize_axis(axis, len(shape))
    if shape[axis] % m:
        raise ValueError(
            f"`{name}` has shape {shape}: axis {axis} (size {shape[axis]}) must be a multiple "
            f"of m={m} to form N:M groups. Pad the array or choose another axis."
        )
    return axis


def tiling_problem(shape: tuple[int, ...], m: int, transposable: bool = True) -> str | None:
    """The tiling rule of N:M kernel masks: why a weight of ``shape`` cannot carry one.

    Transposable masks tile the last two axes into ``m x m`` blocks (both multiples of
    ``m``); plain N:M kernel masks group axis ``-2`` (``in``) by ``m``. Rank >= 2 either way.

    Returns:
      None when the shape tiles, else a short reason such as
      ``"axes (6, 8) not multiples of m=4"``.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        return "rank < 2"
    rows, cols = shape[-2:]
    if rows % m or (transposable and cols % m):
        return (
            f"axes {shape[-2:]} not multiples of m={m}"
            if transposable
            else f"axis -2 ({rows}) not a multiple of m={m}"
        )
    return None


def check_tileable(shape: tuple[int, ...], m: int, name: str = "w") -> None:
    """Checks that the last two axes of ``shape`` tile into ``m x m`` blocks
    (:func:`tiling_problem`)."""
    if tiling_problem(shape, m) is None:
        return
    if len(shape) < 2:
        raise ValueError(
            f"`{name}` has shape {shape}: transposable N:M masks need rank >= 2 "
            "(the last two axes are tiled into m x m blocks)."
        )
    rows, cols = shape[-2:]
    raise ValueError(
        f"`{name}` has shape {shape}: the last two axes ({rows}, {cols}) must both be "
        f"multiples of m={m} to tile into {m}x{m} blocks."
    )


def check_mask_like(mask, w, mask_name: str = "mask", w_name: str = "w") -> None:
    """Checks that ``mask`` has ``w``'s shape and a bool, integer or floating dtype."""
    if jnp.shape(mask) != jnp.shape(w):
        raise ValueError(
            f"`{mask_name}` must have the shape of `{w_name}` {jnp.shape(w)}, "
            f"got {jnp.shape(mask)}."
        )
    dtype = jnp.result_type(mask)
    if not (
        dtype == jnp.bool_
        or jnp.issubdtype(dtype, jnp.integer)
        or jnp.issubdtype(dtype, jnp.floating)
    ):
        raise TypeError(f"`{mask_name}` must be bool, integer or floating, got dtype {dtype}.")


def check_nonnegative_scalar(value, name: str) -> bool:
    """Checks a scalar setting that may be a Python number or a traced array.

    Returns:
      ``False`` when ``value`` is statically known to be zero (callers may skip work),
      ``True`` otherwise. Raises ``ValueError`` for a negative Python number or a non-scalar.
    """
    if isinstance(value, (int, float)):
        if not value >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}.")
        return value != 0
    if jnp.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(value)}.")
    return True
