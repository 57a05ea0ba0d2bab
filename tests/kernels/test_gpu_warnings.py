"""The Triton-deprecation warning is silenced for jaxnm's kernel only, not process-wide.

jax >= 0.11 warns at every Triton ``pallas_call`` lowering. jaxnm binds its Triton kernel
through ``jaxnm.kernels.quiet_lowering`` (the warning is ignored while that kernel is
lowered); a user's own Triton ``pallas_call`` in the same process must still warn. Lowered
for a compile-only H100 (``jaxnm.kernels.targets``), nothing is compiled or run.
"""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.sharding import SingleDeviceSharding

import jaxnm
from jaxnm.kernels import nm_matmul, nm_matmul_gpu, nm_matmul_reference
from jaxnm.kernels.gpu import TRITON_DEPRECATION
from jaxnm.kernels.quiet_lowering import call_quietly

from .conftest import gpu_target_device

JAX_WARNS = tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 11)


def _lower_for_h100(fn, *args):
    """Lowers ``jax.jit(fn)`` for a compile-only H100 and returns the Triton warnings seen."""
    device = gpu_target_device("h100")
    placed = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=SingleDeviceSharding(device)),
        args,
    )
    with warnings.catch_warnings(record=True) as seen, jax.default_device(device):
        warnings.simplefilter("always")
        jax.jit(fn).lower(*placed)
    return [w for w in seen if TRITON_DEPRECATION in str(w.message)]


def _weight(k, n_out, dtype=jnp.bfloat16):
    w = jax.ShapeDtypeStruct((k, n_out), dtype)
    return jax.eval_shape(lambda w: jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4), w)


def _user_kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2


def _user_triton_call(x):
    return pl.pallas_call(_user_kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)


def test_jaxnm_triton_kernel_lowers_without_the_warning():
    x = jax.ShapeDtypeStruct((16, 256), jnp.bfloat16)
    assert _lower_for_h100(lambda x, c: nm_matmul(x, c, backend="gpu"), x, _weight(256, 64)) == []
    batched = jax.ShapeDtypeStruct((3, 16, 256), jnp.bfloat16)  # vmap re-binds the primitive
    fn = jax.vmap(lambda x, c: nm_matmul_gpu(x, c), in_axes=(0, None))
    assert _lower_for_h100(fn, batched, _weight(256, 64)) == []


@pytest.mark.skipif(not JAX_WARNS, reason=f"jax {jax.__version__} does not deprecate Triton")
def test_a_users_triton_call_still_warns():
    x = jax.ShapeDtypeStruct((16, 128), jnp.float32)
    assert _lower_for_h100(_user_triton_call, x), "jaxnm hid jax's warning from a user's kernel"
    # ... also in one program with jaxnm's kernel (one warning: the user's call).
    xb = jax.ShapeDtypeStruct((16, 256), jnp.bfloat16)
    both = lambda x, xb, c: (_user_triton_call(x), nm_matmul(xb, c, backend="gpu"))  # noqa: E731
    assert len(_lower_for_h100(both, x, xb, _weight(256, 64))) == 1


@pytest.mark.skipif(not JAX_WARNS, reason=f"jax {jax.__version__} does not deprecate Triton")
def test_importing_and_using_jaxnm_installs_no_process_wide_filter():
    # A fresh interpreter that shows every DeprecationWarning (as pytest does; none of
    # pytest's own filters): after jaxnm's kernel has been lowered, a user's Triton call
    # still warns.
    gpu_target_device("h100")  # skip, with the reason, without the CUDA plugin
    script = textwrap.dedent(
        """
        import warnings
        import jax, jax.numpy as jnp
        from jax.experimental import pallas as pl
        from jax.sharding import SingleDeviceSharding
        import jaxnm
        from jaxnm.kernels import nm_matmul
        from jaxnm.kernels.targets import compile_only_device

        dev = compile_only_device("h100")
        put = lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=SingleDeviceSharding(dev))
        def user(x):
            k = lambda x_ref, o_ref: o_ref.__setitem__(..., x_ref[...] * 2)
            return pl.pallas_call(k, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
        w = jax.ShapeDtypeStruct((256, 64), jnp.bfloat16)
        c = jax.eval_shape(lambda w: jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4), w)
        x = jax.ShapeDtypeStruct((16, 256), jnp.bfloat16)
        with jax.default_device(dev), warnings.catch_warnings(record=True) as seen:
            jax.jit(lambda x, c: nm_matmul(x, c, backend="gpu")).lower(put(x), jax.tree.map(put, c))
            jaxnm_count = len(seen)
            jax.jit(user).lower(put(jax.ShapeDtypeStruct((16, 128), jnp.float32)))
        triton = [w for w in seen if "Pallas Triton backend is deprecated" in str(w.message)]
        print(jaxnm_count, len(triton))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    run = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jaxnm_count, triton = map(int, run.stdout.split()[-2:])
    assert (jaxnm_count, triton) == (0, 1), run.stdout


def test_quiet_call_under_vmap_and_eagerly():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)
    c = jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4)
    x = jnp.asarray(rng.standard_normal((2, 5, 64)), jnp.float32)
    y = jax.vmap(lambda x: nm_matmul_gpu(x, c, interpret=True))(x)
    ref = jax.vmap(lambda x: nm_matmul_reference(x, c))(x)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="hashable"):
        call_quietly({}, ignore=())  # e.g. a non-frozen dataclass instance
