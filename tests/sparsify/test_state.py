"""Reading the state (jaxnm/_state.py): current_masks and its errors."""

import jax
import optax
import pytest

import jaxnm


def test_untargeted_orbax_restore_says_how(tmp_path):
    import orbax.checkpoint as ocp

    params = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (16, 8))}}

    state = optax.chain(jaxnm.sparsify(2, 4), optax.sgd(0.1)).init(params)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "s", state)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "s")
    with pytest.raises(ValueError, match=r"found 0.*without a target.*to_shape_dtype_struct"):
        jaxnm.current_masks(restored)
