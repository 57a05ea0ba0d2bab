"""NVIDIA 2:4 values and metadata: bit layout, the CUTLASS word order, round trips, errors."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnm
from jaxnm import nvidia_2to4 as nv


def normal(seed, shape, dtype):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def cutlass_offsets(rows: int, words: int) -> np.ndarray:
    """Independent transcription of the published CUTLASS rule (PyTorch's
    ``_semi_structured_conversions.py`` comment, from CUTLASS ``reorder_meta`` and
    ``ColumnMajorInterleaved<2>``) as scatter offsets: logical word ``[r, c]`` goes to flat
    position ``offsets[r, c]`` of the reordered ``(rows, words)`` buffer."""
    offsets = np.empty((rows, words), np.int64)
    for r in range(rows):
        for c in range(words):
            dst_r = r // 32 * 32 + (r % 8) * 4 + (r % 32) // 8
            dst_c = c
            if dst_r % 2 == 0 and dst_c % 2 == 1:
                dst_r, dst_c = dst_r + 1, dst_c - 1
            elif dst_r % 2 == 1 and dst_c % 2 == 0:
                dst_r, dst_c = dst_r - 1, dst_c + 1
            offsets[r, c] = (dst_c // 2) * rows * 2 + dst_r * 2 + dst_c % 2
    return offsets


def test_metadata_known_word():
    # One row (the NVIDIA operand Wᵀ row), K = 16: four groups with kept positions
    # (0,1), (0,2), (1,3), (2,3) -> nibbles 0b0100, 0b1000, 0b1101, 0b1110.
    kept = [(0, 1), (0, 2), (1, 3), (2, 3)]
    mask = np.zeros((16, 1), bool)
    for g, (a, b) in enumerate(kept):
        mask[4 * g + a] = mask[4 * g + b] = True
    w = jnp.arange(1.0, 17.0).reshape(16, 1)
    values, meta = nv.to_nvidia_2to4(jaxnm.compress(w, jnp.asarray(mask), 2, 4), layout="logical")
    assert meta.dtype == jnp.uint16 and meta.shape == (1, 1) and values.shape == (1, 8)
    assert int(meta[0, 0]) == 0b1110_1101_1000_0100
    np.testing.assert_array_equal(values[0], [1, 2, 5, 7, 10, 12, 15, 16])


@pytest.mark.parametrize("rows,words", [(32, 2), (64, 4), (96, 6), (32, 8)])
def test_cutlass_order_matches_published_rule(rows, words):
    logical = np.arange(rows * words, dtype=np.uint16).reshape(rows, words)
    expected = np.empty(rows * words, np.uint16)
    expected[cutlass_offsets(rows, words).ravel()] = logical.ravel()
    got = np.asarray(nv.logical_to_cutlass(jnp.asarray(logical)))
    np.testing.assert_array_equal(got.ravel(), expected)
    np.testing.assert_array_equal(nv.cutlass_to_logical(jnp.asarray(got)), logical)


def test_cutlass_moves_most_words_of_a_64x128_operand():
    logical = np.arange(64 * 8, dtype=np.uint16).reshape(64, 8)  # K = 128: 8 words a row
    got = np.asarray(nv.logical_to_cutlass(jnp.asarray(logical)))
    assert int(np.sum(got != logical)) == 496


def test_cutlass_batched_and_jitted():
    logical = jnp.asarray(np.random.default_rng(0).integers(0, 2**16, (3, 64, 4)), jnp.uint16)
    got = jax.jit(nv.logical_to_cutlass)(logical)
    for i in range(3):
        np.testing.assert_array_equal(got[i], nv.logical_to_cutlass(logical[i]))
    np.testing.assert_array_equal(jax.jit(nv.cutlass_to_logical)(got), logical)


@pytest.mark.parametrize("layout", ["logical", "cutlass"])
@pytest.mark.parametrize("axis", [-2, -1, 0])
def test_round_trip(axis, layout):
    w = normal(3, (32, 64, 32), jnp.bfloat16)
    mask = jaxnm.nm_mask(w, 2, 4, axis=axis)
    c = jaxnm.compress(w, mask, 2, 4, axis=axis)
    values, meta = nv.to_nvidia_2to4(c, layout=layout)
    back = nv.from_nvidia_2to4(values, meta, layout=layout, axis=axis)
    assert back.shape == c.shape and back.axis == c.axis
    np.testing.assert_array_equal(back.values, c.values)
    np.testing.assert_array_equal(back.indices, c.indices)


def test_cutlass_is_the_logical_words_reordered():
    w = normal(4, (128, 64), jnp.float16)
    c = jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4)
    _, logical = nv.to_nvidia_2to4(c, layout="logical")
    _, cutlass = nv.to_nvidia_2to4(c, layout="cutlass")
    expected = np.empty(logical.size, np.uint16)
    expected[cutlass_offsets(*logical.shape).ravel()] = np.asarray(logical).ravel()
    np.testing.assert_array_equal(np.asarray(cutlass).ravel(), expected)
    # Reading one layout as the other gives another (wrong) matrix or an error, never c.
    try:
        wrong = nv.from_nvidia_2to4(*nv.to_nvidia_2to4(c, layout="cutlass"), layout="logical")
    except ValueError:
        return
    assert not np.array_equal(jaxnm.decompress(wrong), jaxnm.decompress(c))


def test_errors():
    w = normal(4, (16, 8), jnp.float32)
    c = jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4)
    with pytest.raises(TypeError, match="layout"):
        nv.to_nvidia_2to4(c)  # the layout is required
    with pytest.raises(ValueError, match="`layout`"):
        nv.to_nvidia_2to4(c, layout="row_major")
    with pytest.raises(ValueError, match="2:4"):
        nv.to_nvidia_2to4(jaxnm.compress(w, jaxnm.nm_mask(w, 4, 8), 4, 8), layout="logical")
    w8 = w[:8]
    with pytest.raises(ValueError, match="multiple of 16"):
        nv.to_nvidia_2to4(jaxnm.compress(w8, jaxnm.nm_mask(w8, 2, 4), 2, 4), layout="logical")
    with pytest.raises(ValueError, match="rows % 32"):
        nv.to_nvidia_2to4(c, layout="cutlass")  # 8 rows
    values = jnp.ones((3, 8))
    with pytest.raises(TypeError, match="layout"):
        nv.from_nvidia_2to4(values, jnp.zeros((3, 1), jnp.uint16))
    with pytest.raises(ValueError, match="same leading axes"):
        nv.from_nvidia_2to4(values, jnp.zeros((3, 2), jnp.uint16), layout="logical")
    with pytest.raises(ValueError, match="not strictly increasing"):
        nv.from_nvidia_2to4(values, jnp.zeros((3, 1), jnp.uint16), layout="logical")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_cutlass_matches_pytorch():
    """PyTorch's own conversion (CUTLASS backend layout), where torch is installed."""
    import torch
    from torch.sparse import _semi_structured_conversions as conv

    from_dense = conv.sparse_semi_structured_from_dense_cutlass
    to_dense = conv.sparse_semi_structured_to_dense_cutlass
    w = normal(5, (128, 64), jnp.float16)  # (K, N): A = Wᵀ
    c = jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4)
    values, meta = nv.to_nvidia_2to4(c, layout="cutlass")
    dense_t = torch.from_numpy(np.asarray(jaxnm.decompress(c)).T.copy())
    t_values, t_meta = from_dense(dense_t)
    np.testing.assert_array_equal(np.asarray(values), t_values.numpy())
    np.testing.assert_array_equal(np.asarray(meta), t_meta.numpy().view(np.uint16))
    back = nv.from_nvidia_2to4(
        jnp.asarray(t_values.numpy()), jnp.asarray(t_meta.numpy()), layout="cutlass"
    )
    np.testing.assert_array_equal(jaxnm.decompress(back), jaxnm.decompress(c))
    np.testing.assert_array_equal(to_dense(t_values, t_meta).numpy(), np.asarray(dense_t))
