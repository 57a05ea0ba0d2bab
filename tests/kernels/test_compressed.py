"""Compressed N:M format: round trips, packing layout, sizes, errors (NVIDIA metadata:
test_nvidia_2to4.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnm
from jaxnm import compressed as cz

NM = [(1, 2), (2, 4), (4, 8), (3, 5), (2, 8), (1, 1)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


# A transposable 2:4 tile: two kept per row and per column.
TILE_2_4 = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], bool)


def _random_nm(rng, shape, n, m, axis, dtype):
    """Random weights and a random exact N:M mask along ``axis`` (NumPy, no compilation)."""
    w = jnp.asarray(rng.standard_normal(shape), dtype)
    moved = list(np.moveaxis(np.empty(shape), axis, -1).shape)
    groups = rng.random((*moved[:-1], moved[-1] // m, m)).argsort(axis=-1) < n
    mask = np.moveaxis(groups.reshape(moved), -1, axis)
    return w, jnp.asarray(mask)


@settings(max_examples=8)
@given(
    nm=st.sampled_from(NM),
    rank=st.integers(1, 3),
    axis_pick=st.integers(0, 2),
    sizes=st.lists(st.sampled_from([1, 3]), min_size=3, max_size=3),
    groups=st.integers(1, 3),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_round_trip(nm, rank, axis_pick, sizes, groups, dtype, seed):
    n, m = nm
    axis = axis_pick % rank
    shape = list(sizes[:rank])
    shape[axis] = groups * m
    rng = np.random.default_rng(seed)
    w, mask = _random_nm(rng, tuple(shape), n, m, axis, dtype)
    c = jaxnm.compress(w, mask, n, m, axis=axis)
    kc = groups * n
    assert c.values.dtype == w.dtype and c.indices.dtype == jnp.uint8
    assert c.values.shape == tuple(shape[:axis] + [kc] + shape[axis + 1 :])
    bits = (m - 1).bit_length()
    assert c.indices.shape == (bits, *shape[:axis], -(-kc // 8), *shape[axis + 1 :])
    np.testing.assert_array_equal(jaxnm.decompress(c), w * mask)
    np.testing.assert_array_equal(cz.kept_mask(c), mask)
    idx = np.asarray(cz.group_indices(c))
    assert idx.min() >= 0 and idx.max() < m
    # Kept values within each group are stored in increasing dense position.
    pos = np.moveaxis(idx, axis, -1).reshape(-1, n)
    assert np.all(np.diff(pos, axis=-1) > 0)


@settings(max_examples=8)
@given(
    bits=st.integers(1, 4),
    length=st.integers(1, 40),
    cols=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_pack_unpack_indices(bits, length, cols, seed):
    idx = np.random.default_rng(seed).integers(0, 2**bits, (length, cols))
    planes = cz.pack_indices(jnp.asarray(idx), bits, 0)
    assert planes.shape == (bits, -(-length // 8), cols)
    np.testing.assert_array_equal(cz.unpack_indices(planes, length, 0), idx)


def test_bit_plane_layout_is_as_documented():
    # Run of 8 indices along the group axis; plane p byte has bit j = bit p of index j.
    idx = jnp.array([3, 0, 1, 2, 3, 3, 0, 1])[:, None]
    planes = np.asarray(cz.pack_indices(idx, 2, 0))[:, 0, 0]
    low = sum(((int(i) >> 0) & 1) << j for j, i in enumerate(idx[:, 0]))
    high = sum(((int(i) >> 1) & 1) << j for j, i in enumerate(idx[:, 0]))
    assert (int(planes[0]), int(planes[1])) == (low, high) == (0b10110101, 0b00111001)


@pytest.mark.parametrize(
    "n,m,dtype,ratio", [(2, 4, jnp.bfloat16, 0.5625), (4, 8, jnp.bfloat16, 0.59375)]
)
def test_nbytes(n, m, dtype, ratio):
    w = jnp.ones((512, 256), dtype)
    mask = jaxnm.nm_mask(jnp.asarray(np.random.default_rng(0).random((512, 256))), n, m)
    c = jaxnm.compress(w, mask, n, m)
    assert c.dense_nbytes == 512 * 256 * 2
    assert c.nbytes == c.values.nbytes + c.indices.nbytes
    assert c.nbytes / c.dense_nbytes == pytest.approx(ratio)


def test_pytree_jit_and_vmap():
    rng = np.random.default_rng(0)
    w, mask = _random_nm(rng, (3, 16, 4), 2, 4, 1, jnp.float32)
    c = jax.jit(lambda w, k: jaxnm.compress(w, k, 2, 4, axis=1))(w, mask)
    leaves, treedef = jax.tree_util.tree_flatten(c)
    assert len(leaves) == 2 and leaves[0] is c.values and leaves[1] is c.indices
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert (rebuilt.shape, rebuilt.n, rebuilt.m, rebuilt.axis) == ((3, 16, 4), 2, 4, 1)
    np.testing.assert_array_equal(jax.jit(jaxnm.decompress)(c), w * mask)
    # vmap over a leading batch of 2-D weights (group axis 0 of each example).
    cb = jax.vmap(lambda w, k: jaxnm.compress(w, k, 2, 4, axis=0))(w, mask)
    assert cb.shape == (16, 4) and cb.values.shape == (3, 8, 4)
    np.testing.assert_array_equal(jax.vmap(jaxnm.decompress)(cb), w * mask)


def test_under_jit_short_groups_store_zeros_and_long_groups_become_nan():
    w = jnp.arange(1.0, 13.0).reshape(12, 1)
    mask = jnp.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0], bool).reshape(12, 1)
    c = jax.jit(lambda w, k: jaxnm.compress(w, k, 2, 4, axis=0))(w, mask)
    # Group 0 keeps only w[0]: the second slot holds a zero, so decompress == w * mask.
    # Group 1 keeps three, more than any 2:4 format holds: its values are NaN, not w[4], w[5].
    # Group 2 is 2:4 and exact.
    np.testing.assert_array_equal(
        jaxnm.decompress(c)[:, 0], [1, 0, 0, 0, np.nan, np.nan, 0, 0, 0, 10, 11, 0]
    )
    with pytest.raises(ValueError, match="not 2:4 along axis 0"):
        jaxnm.compress(w, mask, 2, 4, axis=0)  # eager: a clear error


def test_transpose_of_transposable_mask():
    w = jax.random.normal(jax.random.key(0), (2, 16, 8))
    mask = jnp.asarray(np.tile(TILE_2_4, (2, 4, 2)))
    assert bool(jaxnm.is_transposable_nm(mask, 2, 4))
    c = jaxnm.compress(w, mask, 2, 4)
    ct = cz.transpose(c)
    assert ct.shape == (2, 8, 16) and ct.axis == 1
    np.testing.assert_array_equal(jaxnm.decompress(ct), jnp.swapaxes(w * mask, -1, -2))


def test_transpose_rejects_non_transposable_and_wrong_axis():
    w = jax.random.normal(jax.random.key(1), (16, 8))
    mask = jnp.zeros((16, 8), bool).at[0::4].set(True).at[1::4].set(True)  # 2:4 along rows only
    c = jaxnm.compress(w, mask, 2, 4)
    with pytest.raises(ValueError, match="not 2:4 along axis 0"):
        cz.transpose(c)
    c_last = jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4, axis=-1), 2, 4, axis=-1)
    with pytest.raises(ValueError, match="grouped along axis -2"):
        cz.transpose(c_last)


def test_gather_kept():
    w = jax.random.normal(jax.random.key(2), (8, 4))
    mask = jaxnm.nm_mask(w, 2, 4)
    c = jaxnm.compress(w, mask, 2, 4)
    np.testing.assert_array_equal(cz.gather_kept(w, c), c.values)
    with pytest.raises(ValueError, match="expected"):
        cz.gather_kept(w[:4], c)


def test_compress_errors():
    w = jax.random.normal(jax.random.key(5), (8, 4))
    mask = jaxnm.nm_mask(w, 2, 4)
    with pytest.raises(ValueError, match="must match"):
        jaxnm.compress(w, mask[:4], 2, 4)
    with pytest.raises(ValueError, match="not 2:4 along axis 0"):
        jaxnm.compress(w, mask.at[0, 0].set(~mask[0, 0]), 2, 4)
    with pytest.raises(ValueError, match="first bad group #0 keeps 4"):
        jaxnm.compress(w, jnp.ones_like(mask), 2, 4)
    w6 = jnp.ones((8, 6))
    with pytest.raises(ValueError, match="multiple of m=4"):
        jaxnm.compress(w6, w6, 2, 4, axis=-1)
    with pytest.raises(ValueError, match="out of range"):
        jaxnm.compress(w, mask, 2, 4, axis=5)
    with pytest.raises(ValueError, match="multiple of m=3"):
        jaxnm.compress(w, mask, 1, 3)
    with pytest.raises(ValueError, match="floating"):
        jaxnm.compress(w.astype(jnp.int32), mask, 2, 4)
    with pytest.raises(ValueError, match="0 < n <= m"):
        jaxnm.compress(w, mask, 5, 4)
    with pytest.raises(TypeError, match="static Python int"):
        jaxnm.compress(w, mask, 2.0, 4)


def test_jax_export_round_trip():
    """A function taking and returning a CompressedNM serializes with jax.export."""
    pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")
    from jax import export

    w = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
    c = jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4)
    x = jnp.ones((3, 16))

    def forward(c, x):
        return x @ jaxnm.decompress(c)

    served = export.deserialize(export.export(jax.jit(forward))(c, x).serialize())
    np.testing.assert_array_equal(served.call(c, x), forward(c, x))

    def prune(w):
        return jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4)

    made = export.deserialize(export.export(jax.jit(prune))(w).serialize()).call(w)
    assert isinstance(made, jaxnm.CompressedNM)
    assert (made.shape, made.n, made.m, made.axis) == (c.shape, c.n, c.m, c.axis)
    np.testing.assert_array_equal(jaxnm.decompress(made), jaxnm.decompress(c))
