"""Bit-packed mask storage: round trip, dtypes, sizes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnm.masks.packing import pack, packed_shape, unpack, word_dtype


@settings(max_examples=10)
@given(
    m=st.sampled_from([1, 2, 3, 4, 8, 16, 32]),
    groups=st.integers(1, 3),
    cols=st.integers(1, 5),
    lead=st.sampled_from([(), (2,), (3, 1)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip(m, groups, cols, lead, seed):
    mask = np.random.default_rng(seed).random((*lead, groups * m, cols)) < 0.5
    bits = pack(mask, m)
    assert bits.shape == (*lead, groups, cols) == packed_shape(mask.shape, m)
    assert bits.dtype == word_dtype(m)
    np.testing.assert_array_equal(np.asarray(unpack(bits, m)), mask)


def test_bit_layout_and_size():
    mask = np.zeros((8, 2), bool)
    mask[[0, 3], 0] = True
    mask[[5, 6], 1] = True
    bits = np.asarray(pack(mask, 4))
    np.testing.assert_array_equal(bits, [[0b1001, 0], [0, 0b0110]])
    w = np.zeros((64, 64), bool)
    assert pack(w, 8).nbytes * 8 == w.size  # 1 bit per weight for m = 8
    assert pack(w, 16).nbytes * 8 == w.size


def test_jit_and_numeric_masks():
    mask = jnp.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, 1.0]])
    bits = jax.jit(pack, static_argnums=1)(mask, 4)
    np.testing.assert_array_equal(jax.jit(unpack, static_argnums=1)(bits, 4), mask != 0)


def test_errors():
    with pytest.raises(ValueError, match="m"):
        word_dtype(33)
    with pytest.raises(ValueError, match="multiple"):
        pack(np.ones((6, 4), bool), 4)
    with pytest.raises(ValueError, match="rank"):
        unpack(jnp.zeros((4,), jnp.uint8), 4)
    with pytest.raises(ValueError, match="dtype"):
        unpack(jnp.zeros((2, 4), jnp.uint16), 4)
