"""The cuSPARSELt training linear layer on sharded arrays (``jax.shard_map``).

cuSPARSELt calls are per-device custom calls that XLA cannot partition, so on a mesh each
device runs :func:`~jaxnm.kernels.cusparselt.cusparselt_linear` on its own block:

* ``token_axis``: data parallel, ``x`` split along its tokens; ``w`` is replicated over this
  axis and ``shard_map``'s transpose sums the weight gradient over it (one all-reduce, as a
  data-parallel dense layer does).
* ``out_axis``: tensor parallel, ``w`` and ``mask`` split along ``out`` (N); each device
  computes its block of ``y``. (A split along ``in`` would cut the 2:4 groups of the forward
  and need a reduction of ``y``; it is not offered.)

MVUE keys are folded with the token-shard index, so shards prune independently. Each local
block must meet cuSPARSELt's rules (local ``N`` a multiple of 16; any local token count).
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh, PartitionSpec

from jaxnm.kernels.cusparselt.training import cusparselt_linear


def sharded_cusparselt_linear(
    x: jax.Array,
    w: jax.Array,
    mask: jax.Array,
    *,
    mesh: Mesh,
    token_axis: str | None = None,
    out_axis: str | None = None,
    key: jax.Array | None = None,
    **kwargs,
) -> jax.Array:
    """:func:`~jaxnm.kernels.cusparselt.cusparselt_linear` with ``x`` and ``w`` sharded on ``mesh``.

    Args:
      x: ``(T, K)`` activations (2-D: flatten leading token axes first).
      w: ``(K, N)`` kernel; ``mask`` of the same shape.
      mesh: the device mesh.
      token_axis: mesh axis splitting ``x``'s tokens (``T`` divisible by its size), or None.
      out_axis: mesh axis splitting ``w``/``mask`` along ``N`` (divisible by its size), or None.
      key: PRNG key for ``prune`` (replicated; folded with the token-shard index).
      **kwargs: the other keyword arguments of ``cusparselt_linear`` (``prune``,
        ``check``, ``alg_ids``, ``interpret``). ``weight_compression="refresh"`` is not
        supported here.

    Returns:
      ``(T, N)`` sharded as ``PartitionSpec(token_axis, out_axis)``.
    """
    if jax.numpy.ndim(x) != 2:
        raise ValueError(f"`x` must be 2-D (T, K) here, got shape {jax.numpy.shape(x)}.")
    for name, axis in (("token_axis", token_axis), ("out_axis", out_axis)):
        if axis is not None and axis not in mesh.axis_names:
            raise ValueError(f"`{name}` (={axis!r}) is not an axis of the mesh {mesh.axis_names}.")
    if "compressed" in kwargs or kwargs.get("weight_compression", "step") != "step":
        raise ValueError("sharded_cusparselt_linear compresses per step only.")
    x_spec = PartitionSpec(token_axis, None)
    w_spec = PartitionSpec(None, out_axis)
    has_key = key is not None
    body = functools.partial(
        _local, token_axis=token_axis, out_axis=out_axis, has_key=has_key, kwargs=kwargs
    )
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(x_spec, w_spec, w_spec, PartitionSpec()),
        out_specs=PartitionSpec(token_axis, out_axis),
    )
    return fn(x, w, mask, key if has_key else jax.numpy.zeros((), jax.numpy.uint32))


def _local(x, w, mask, key, *, token_axis, out_axis, has_key, kwargs):
    # The custom VJP returns dx varying over `out_axis` and dW varying over `token_axis`;
    # casting the replicated inputs to varying makes shard_map's transpose sum them.
    if out_axis is not None:
        x = jax.lax.pcast(x, out_axis, to="varying")
    if token_axis is not None:
        w = jax.lax.pcast(w, token_axis, to="varying")
        if has_key:
            key = jax.random.fold_in(key, jax.lax.axis_index(token_axis))
    return cusparselt_linear(x, w, mask, key=key if has_key else None, **kwargs)
