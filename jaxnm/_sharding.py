"""Reshapes that keep an explicit sharding ("sharding in types", ``AxisType.Explicit``).

On a mesh with ``Explicit`` axes JAX types carry their sharding, and a reshape that splits
or merges a sharded axis needs an ``out_sharding``. The mask code only ever splits an axis
into ``(outer, m)`` or merges ``(outer, m)`` back, with the ``m`` part local to a device, so
the outer part keeps the axis' mesh axes. On ``Auto`` meshes and unsharded arrays this is a
plain ``jnp.reshape``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def reshape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``x.reshape(shape)``, keeping an explicit sharding on the outer part of each axis.

    Every output axis of size > 1 whose block (its size times the sizes of the axes after
    it) equals the block of an input axis inherits that input axis' mesh axes (the first
    such output axis, so a split keeps the sharding on its outer part and a merge takes it
    from its outer input axis); the other output axes are unsharded.

    Args:
      x: array of any shape; sharded or not.
      shape: the new shape (same number of elements).

    Returns:
      ``x`` reshaped; with an ``out_sharding`` when ``x``'s type carries ``Explicit`` mesh
      axes.
    """
    shape = tuple(int(d) for d in shape)
    sharding = explicit_sharding(x)
    if sharding is None:
        return jnp.reshape(x, shape)
    in_shape = jnp.shape(x)
    in_spec = tuple(sharding.spec) + (None,) * (len(in_shape) - len(sharding.spec))
    by_block = {}
    for i in range(len(in_shape)):  # a size-1 axis shares its block with the next axis
        block = math.prod(in_shape[i:])
        if by_block.get(block) is None:
            by_block[block] = in_spec[i]
    out_spec, used = [], set()
    for j in range(len(shape)):
        block = math.prod(shape[j:])
        if shape[j] > 1 and block in by_block and block not in used:
            used.add(block)
            out_spec.append(by_block[block])
        else:
            out_spec.append(None)
    out = NamedSharding(sharding.mesh, PartitionSpec(*out_spec))
    return lax.reshape(x, shape, out_sharding=out)


def explicit_sharding(x) -> NamedSharding | None:
    """The sharding in ``x``'s type if its mesh has an ``Explicit`` axis, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return None
    return sharding


def explicit_context(x) -> bool:
    """Whether ``x`` carries an ``Explicit`` sharding or the context mesh
    (``jax.set_mesh``) has an ``Explicit`` axis; true also inside ``vmap``, where the
    vmapped array's type no longer shows its sharded axes."""
    if explicit_sharding(x) is not None:
        return True
    mesh = jax.sharding.get_abstract_mesh()
    return AxisType.Explicit in tuple(getattr(mesh, "axis_types", ()))
