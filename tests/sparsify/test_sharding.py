"""Sharded training with jaxnm.sparsify on 8 virtual CPU devices (own process: the device
count must be set before JAX starts)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import re
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    import jaxnm

    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    specs = {
        "l1": {"kernel": P("data", "model"), "bias": P("model")},
        "l2": {"kernel": P("model", None)},
    }
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    k1, k2, kx = jax.random.split(jax.random.key(0), 3)
    params = {
        "l1": {"kernel": jax.random.normal(k1, (64, 32)), "bias": jnp.zeros(32)},
        "l2": {"kernel": jax.random.normal(k2, (32, 16))},
    }
    x = jax.random.normal(kx, (16, 64))
    y = jnp.sin(x[:, :16])

    for transposable in (True,):
        tx = optax.chain(
            jaxnm.sparsify(2, 4, transposable=transposable, refresh_every=2), optax.sgd(0.1)
        )

        @jax.jit
        def step(params, state, x, y):
            def loss_fn(p):
                p = jaxnm.apply_masks(p, jaxnm.masks(state))
                h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
                return jnp.mean((h @ p["l2"]["kernel"] - y) ** 2)

            grads = jax.grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        def run(params, x):
            state = tx.init(params)
            for _ in range(5):  # refreshes at steps 2 and 4
                params, state = step(params, state, x, y)
            return params, state

        p1, s1 = run(params, x)
        ps = jax.device_put(params, shardings)
        p8, s8 = run(ps, jax.device_put(x, NamedSharding(mesh, P("data", None))))
        # Same masks and params as on one device.
        jax.tree.map(np.testing.assert_array_equal, jaxnm.masks(s1), jaxnm.masks(s8))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p8)
        # Masks keep the params' sharding: the packed state and the unpacked masks.
        state8 = s8[0]
        for name in ("l1", "l2"):
            sh = shardings[name]["kernel"]
            packed = state8.masks[name]["kernel"]
            assert packed.sharding.is_equivalent_to(sh, 2), (name, packed.sharding)
            assert p8[name]["kernel"].sharding.is_equivalent_to(sh, 2)
            unpacked = jaxnm.masks(s8)[name]["kernel"]
            assert unpacked.sharding.is_equivalent_to(sh, 2), (name, unpacked.sharding)
        # The refresh alone moves no weight between devices: its only collectives are
        # scalar loop predicates, and its outputs keep the params' shardings.
        refresher = jaxnm.sparsify(2, 4, transposable=transposable, refresh_every=1)
        state = refresher.init(ps)

        def refresh(p, s):
            return refresher.update(jax.tree.map(jnp.zeros_like, p), s, p)[1]

        compiled = jax.jit(refresh).lower(ps, state).compile()
        hlo = compiled.as_text()
        assert not re.search(r"all-gather|all-to-all|collective-permute|reduce-scatter", hlo)
        for line in hlo.splitlines():
            if "all-reduce(" in line:
                assert re.search(r"= (pred|s32|f32)\\[\\] all-reduce", line), line
        out = compiled.output_shardings.masks
        for name in ("l1", "l2"):
            assert out[name]["kernel"].is_equivalent_to(shardings[name]["kernel"], 2), out
    print("OK")
    """
)


def test_sharded_training_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.pop("JAX_PLATFORMS", None)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("OK")
