"""Parameter selection (jaxnm/_params.py): the default rule, `include` predicates and kernel
views, and a selection of nothing (an error for `include`, a warning for the default)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_params import params as _params

import jaxnm

N, M = 2, 4


def test_default_include_and_masks():
    state = jaxnm.sparsify(N, M).init(_params())
    masks = jaxnm.current_masks(state)
    assert masks["dense"]["bias"] is None and masks["odd"]["kernel"] is None
    for name in ("dense", "out"):
        assert masks[name]["kernel"].dtype == jnp.bool_
        assert masks[name]["kernel"].shape == _params()[name]["kernel"].shape
        assert bool(jaxnm.is_transposable_nm(masks[name]["kernel"], N, M))
    # Stored bit-packed: one uint8 per group of 4 (2 bits per weight, not 8).
    assert state.masks["dense"]["kernel"].shape == (2, 16)
    assert state.masks["dense"]["kernel"].dtype == jnp.uint8
    plain = jaxnm.current_masks(jaxnm.sparsify(N, M, transposable=False).init(_params()))
    assert bool(jaxnm.is_nm(plain["out"]["kernel"], N, M, axis=-2))
    np.testing.assert_array_equal(
        plain["out"]["kernel"], jaxnm.nm_mask(_params()["out"]["kernel"], N, M)
    )


def test_include_predicate_and_error_names_path():
    tx = jaxnm.sparsify(N, M, include=lambda path, leaf: path[0] == "out")
    masks = jaxnm.current_masks(tx.init(_params()))
    assert masks["dense"]["kernel"] is None and masks["out"]["kernel"] is not None
    bad = jaxnm.sparsify(N, M, include=lambda path, leaf: path[-1] == "kernel")
    with pytest.raises(ValueError, match="odd/kernel"):
        bad.init(_params())
    with pytest.raises(ValueError, match="dense/bias"):
        jaxnm.sparsify(N, M, include=lambda path, leaf: path[-1] == "bias").init(_params())


def test_include_may_return_a_kernel_view():
    """A rank-3 kernel (in, heads, head_dim) selected with KernelView(1) gets a transposable
    mask on its flattened (in, heads * head_dim) view (2 heads: fewer than m)."""
    w = jax.random.normal(jax.random.key(0), (8, 2, 4))
    params = {"q": {"kernel": w}, "o": {"kernel": jnp.ones((8, 8))}}

    def include(path, leaf):
        return jaxnm.KernelView(1) if path == ("q", "kernel") else path[-1] == "kernel"

    state = jaxnm.sparsify(N, M, include=include).init(params)
    assert state.views == ((("q", "kernel"), jaxnm.KernelView(1), (8, 2, 4)),)
    assert state.masks["q"]["kernel"].shape == (2, 8)  # packed on the (8, 8) view
    mask = jaxnm.current_masks(state)["q"]["kernel"]
    assert mask.shape == (8, 2, 4)
    assert bool(jaxnm.is_transposable_nm(mask.reshape(8, 8), N, M))
    np.testing.assert_array_equal(
        mask.reshape(8, 8), jaxnm.transposable_mask(w.reshape(8, 8), N, M)
    )
    dense_phase = jaxnm.sparsify(N, M, include=include, start_step=2).init(params)
    assert bool(jaxnm.current_masks(dense_phase)["q"]["kernel"].all())
    assert dense_phase.masks["q"]["kernel"].shape == (2, 8)
    with pytest.raises(ValueError, match="flattened"):
        jaxnm.sparsify(N, M, include=lambda path, leaf: jaxnm.KernelView(1)).init(
            {"k": jnp.ones((6, 2, 4))}
        )
    with pytest.raises(ValueError, match="in_axes"):
        jaxnm.KernelView(0)


def test_include_selecting_nothing_raises_with_the_path_form():
    tx = jaxnm.sparsify(2, 4, include=lambda path, leaf: path == "dense/kernel")
    with pytest.raises(
        ValueError, match=r"selects no parameter.*format_path.*\('dense', 'kernel'\)"
    ):
        tx.init(_params())
    tx = jaxnm.sparsify(2, 4, include=lambda p, _: jaxnm.format_path(p) == "dense/kernel")
    assert jaxnm.current_masks(tx.init(_params()))["dense"]["kernel"] is not None


def test_default_selection_of_nothing_warns():
    params = {"w1": jnp.ones((8, 8)), "layer": {"kernel": jnp.ones((30, 64))}}
    with pytest.warns(UserWarning, match=r"selects no parameter.*'w1'.*not named 'kernel'"):
        state = jaxnm.sparsify(2, 4).init(params)
    reasons = {jaxnm.format_path(r.path): r.reason for r in jaxnm.sparsity_summary(state).rows}
    assert reasons == {
        "w1": "not named 'kernel'",
        "layer/kernel": "axes (30, 64) not multiples of m=4",
    }
