"""The sparsity summary's optional "certified >=" column (needs the dense params)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnm


def _params():
    k = jax.random.split(jax.random.key(3), 3)
    return {
        "a": {"kernel": jax.random.normal(k[0], (16, 16))},
        "b": {"kernel": jax.random.cauchy(k[1], (16, 16))},
        # (in, heads, head_dim): masked on its flattened (16, 16) view
        "v": {"kernel": jax.random.normal(k[2], (16, 2, 8))},
        "bias": jnp.ones((8,)),
    }


def _include(path, leaf):
    return jaxnm.KernelView(1) if leaf.ndim == 3 else path[-1] == "kernel"


def _optimal_fraction(w, mask, n, m):
    """Retained |w| over the OR-Tools optimum, on the 2-D view."""
    w = np.abs(np.asarray(w)).reshape(mask.shape)
    best = np.asarray(jaxnm.transposable_mask(jnp.asarray(w), n, m, method="exact"))
    return float(np.sum(w * mask) / np.sum(w * best))


def test_certified_column_bounds_the_true_fraction():
    params = _params()
    state = jaxnm.sparsify(4, 8, method="greedy", include=_include).init(params)
    summary = jaxnm.sparsity_summary(state, params)
    masks = jaxnm.current_masks(state)
    rows = {jaxnm.format_path(r.path): r for r in summary.rows}
    assert {k for k, r in rows.items() if r.sparse} == {"a/kernel", "b/kernel", "v/kernel"}
    for name, row in rows.items():
        if not row.sparse:
            assert row.certified is None
            continue
        layer = name.split("/")[0]
        mask = np.asarray(masks[layer]["kernel"]).reshape(16, 16)
        true = _optimal_fraction(params[layer]["kernel"], mask, 4, 8)
        assert 0.5 <= row.certified <= true + 1e-7, (name, row.certified, true)
    assert rows["v/kernel"].certified < 1.0  # greedy is short of the optimum there
    lines = str(summary).splitlines()
    assert lines[0].split()[:6] == ["parameter", "shape", "n:m", "density", "certified", ">="]
    assert "certified" not in str(jaxnm.sparsity_summary(state))  # off by default


def test_exact_masks_certify_as_optimal():
    params = _params()
    state = jaxnm.sparsify(4, 8, method="exact", include=_include).init(params)
    for row in jaxnm.sparsity_summary(state, params).sparse:
        assert row.certified == 1.0, row  # every tile proven: gap 0
    plain = jaxnm.sparsify(2, 4, transposable=False).init(params)
    for row in jaxnm.sparsity_summary(plain, params).sparse:  # top-n per group: optimal
        assert row.certified == 1.0, row


def test_dense_phase_and_bad_params():
    params = _params()
    dense_start = jaxnm.sparsify(2, 4, start_step=2).init(params)
    assert all(r.certified is None for r in jaxnm.sparsity_summary(dense_start, params).rows)
    state = jaxnm.sparsify(2, 4).init(params)
    with pytest.raises(ValueError, match="no parameter `a/kernel`"):
        jaxnm.sparsity_summary(state, {"b": params["b"]})
    wrong = dict(params, a={"kernel": jnp.ones((8, 16))})
    with pytest.raises(ValueError, match=r"`a/kernel` of shape \(8, 16\).*\(16, 16\)"):
        jaxnm.sparsity_summary(state, wrong)
