"""jaxnm.apply_masks (jaxnm/_apply_masks.py): straight-through masking, strict shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnm


@pytest.mark.parametrize("dtype", [jnp.bool_, jnp.float32])
def test_apply_masks_straight_through(dtype):
    w = jnp.arange(1.0, 9.0).reshape(4, 2)
    mask = jnp.array([[1, 0], [0, 1], [1, 1], [0, 0]]).astype(dtype)
    params = {"k": w, "b": jnp.ones(2)}
    eff = jaxnm.apply_masks(params, {"k": mask, "b": None})
    np.testing.assert_array_equal(eff["k"], jnp.where(mask != 0, w, 0))
    np.testing.assert_array_equal(eff["b"], params["b"])
    c = jnp.arange(8.0).reshape(4, 2)
    grads = jax.grad(lambda p: jnp.sum(jaxnm.apply_masks(p, {"k": mask, "b": None})["k"] * c))(
        params
    )
    np.testing.assert_array_equal(grads["k"], c)  # pruned entries get the gradient too


def test_apply_masks_rejects_a_broadcasting_mask():
    params = {"k": jnp.ones((64, 64))}
    with pytest.raises(ValueError, match=r"`k`.*\(64, 1\).*\(64, 64\)"):
        jaxnm.apply_masks(params, {"k": jnp.ones((64, 1), bool)})
