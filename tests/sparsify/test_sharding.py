"""Sharded training with jaxnm.sparsify on 8 virtual CPU devices (own process: the device
count must be set before JAX starts)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
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
                p = jaxnm.apply_masks(p, jaxnm.current_masks(state))
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
        same = np.testing.assert_array_equal
        jax.tree.map(same, jaxnm.current_masks(s1), jaxnm.current_masks(s8))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p8)
        # Masks keep the params' sharding: the packed state and the unpacked masks.
        state8 = s8[0]
        for name in ("l1", "l2"):
            sh = shardings[name]["kernel"]
            packed = state8.masks[name]["kernel"]
            assert packed.sharding.is_equivalent_to(sh, 2), (name, packed.sharding)
            assert p8[name]["kernel"].sharding.is_equivalent_to(sh, 2)
            unpacked = jaxnm.current_masks(s8)[name]["kernel"]
            assert unpacked.sharding.is_equivalent_to(sh, 2), (name, unpacked.sharding)
        assert_refresh_moves_no_weight(ps, shardings, transposable)
    print("OK")
    """
)

# The same on a mesh with Explicit axes ("sharding in types"): the arrays' types carry their
# shardings, so every reshape in the mask refresh and packing must state its output sharding.
EXPLICIT_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import jaxnm

    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
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

    def make_step(tx, sharded):
        # Explicit mode asks for the output sharding of matmuls with sharded contractions.
        out1, out2 = (P("data", "model"), P("data", None)) if sharded else (None, None)

        @jax.jit
        def step(params, state, x, y):
            def loss_fn(p):
                p = jaxnm.apply_masks(p, jaxnm.current_masks(state))
                h = jnp.tanh(jnp.matmul(x, p["l1"]["kernel"], out_sharding=out1) + p["l1"]["bias"])
                out = jnp.matmul(h, p["l2"]["kernel"], out_sharding=out2)
                return jnp.mean((out - y) ** 2)

            grads = jax.grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return step

    def run(tx, params, x, y, sharded):
        step = make_step(tx, sharded)
        state = tx.init(params)
        masks = []
        for _ in range(6):
            params, state = step(params, state, x, y)
            masks.append(jaxnm.current_masks(state))
        return params, state, masks

    settings = [
        dict(refresh_every=2),  # refreshes at steps 2 and 4
        dict(refresh_every=1, start_step=2, end_step=4, dense_tail=True, srste=1e-2),
    ]
    for kwargs in settings:
        tx = optax.chain(jaxnm.sparsify(2, 4, transposable=True, **kwargs), optax.sgd(0.1))
        p1, s1, masks1 = run(tx, params, x, y, sharded=False)
        with jax.set_mesh(mesh):
            ps = jax.device_put(params, shardings)
            xs, ys = (jax.device_put(a, NamedSharding(mesh, P("data", None))) for a in (x, y))
            p8, s8, masks8 = run(tx, ps, xs, ys, sharded=True)
            # Same masks (after every step) and params as on one device.
            jax.tree.map(np.testing.assert_array_equal, masks1, masks8)
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p8
            )
            # Masks keep the params' sharding, in the arrays' types too.
            for name in ("l1", "l2"):
                sh = shardings[name]["kernel"]
                for arr in (s8[0].masks[name]["kernel"], masks8[-1][name]["kernel"]):
                    assert arr.sharding.is_equivalent_to(sh, 2), (name, arr.sharding)
                    assert jax.typeof(arr).sharding.spec == sh.spec, (name, jax.typeof(arr))
                assert p8[name]["kernel"].sharding.is_equivalent_to(sh, 2)

    # The N:M op with an MVUE weight gradient: same gradient as on one device.
    from jaxnm.ops import nm_linear

    w, mask = params["l1"]["kernel"], jaxnm.nm_mask(params["l1"]["kernel"], 2, 4)
    xt = jax.random.normal(kx, (8, 4, 64))

    def op_loss(w, x, mask):
        out = nm_linear(x, w, mask, grad_sparsity=jaxnm.MVUE(2, 4), key=jax.random.key(1))
        return jnp.sum(out**2)

    g1 = jax.jit(jax.grad(op_loss))(w, xt, mask)
    with jax.set_mesh(mesh):
        put = lambda a, s: jax.device_put(a, NamedSharding(mesh, s))  # noqa: E731
        g8 = jax.jit(jax.grad(op_loss))(
            put(w, P(None, "model")), put(xt, P("data", None, None)), put(mask, P(None, "model"))
        )
        np.testing.assert_allclose(g1, g8, rtol=1e-4, atol=1e-4)
        assert jax.typeof(g8).sharding.spec == P(None, "model"), jax.typeof(g8)

    with jax.set_mesh(mesh):
        assert_refresh_moves_no_weight(jax.device_put(params, shardings), shardings, True)
    print("OK")
    """
)


# The HLO check both scripts share (prepended to each; XLA_FLAGS is set in the environment).
REFRESH_CHECK = textwrap.dedent(
    """
    import re
    import jax, jax.numpy as jnp
    import jaxnm


    def assert_refresh_moves_no_weight(ps, shardings, transposable):
        \"\"\"The mask refresh alone moves no weight between devices: its only collectives
        are scalar loop predicates, and its outputs keep the params' shardings.\"\"\"
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
    """
)


def _run_on_8_devices(script: str) -> None:
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags)
    env.pop("JAX_PLATFORMS", None)
    result = subprocess.run(
        [sys.executable, "-c", REFRESH_CHECK + script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("OK")


def test_sharded_training_matches_one_device():
    _run_on_8_devices(SCRIPT)


def test_explicit_mesh_training_matches_one_device():
    _run_on_8_devices(EXPLICIT_SCRIPT)
