"""jaxnm.nnx.sparsify_model and jaxnm.nnx.Optimizer (jaxnm/nnx/model.py): end-to-end N:M training
of NNX models, each layer's mask in its own op Variable written by the optimizer."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnm
import jaxnm.nnx

N, M = 2, 4

MVUE_2_4 = jaxnm.MVUE(2, 4)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(6, 16, rngs=rngs)  # 6 does not tile by 4: stays dense
        self.l2 = nnx.Linear(16, 16, rngs=rngs)
        self.e = nnx.Einsum("bd,dh->bh", (16, 8), (8,), rngs=rngs)
        self.out = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.l1(x))
        h = jnp.tanh(self.l2(h))
        return self.out(jnp.tanh(self.e(h)))


class ConvNet(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)  # in=3: stays dense
        self.c2 = nnx.Conv(8, 8, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.c1(x))
        h = jax.nn.relu(self.c2(h))
        return self.head(h.mean(axis=(1, 2)))


def _task(net, key=0):
    kx, kt = jax.random.split(jax.random.key(key))
    shape = (32, 6) if net is MLP else (16, 8, 8, 3)
    x = jax.random.normal(kx, shape)
    teacher = net(nnx.Rngs(kt))
    return x, jax.lax.stop_gradient(teacher(x))


def _setup(net, grad_sparsity=MVUE_2_4, **kwargs):
    model = net(nnx.Rngs(1))
    tx = optax.chain(jaxnm.sparsify(N, M, **kwargs), optax.adam(0.02))
    optimizer = jaxnm.nnx.Optimizer(model, tx, wrt=nnx.Param)
    jaxnm.nnx.sparsify_model(model, optimizer, grad_sparsity=grad_sparsity, rngs=nnx.Rngs(2))
    return model, optimizer


@nnx.jit
def _train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda mdl: jnp.mean((mdl(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss


def _sparse_layers(model):
    return {
        path: layer
        for path, layer in nnx.iter_graph(model)
        if isinstance(getattr(layer, "dot_general", None), jaxnm.nnx.NMOp)
        or isinstance(getattr(layer, "conv_general_dilated", None), jaxnm.nnx.NMOp)
        or isinstance(getattr(layer, "einsum_op", None), jaxnm.nnx.NMOp)
    }


@pytest.mark.parametrize("net, expected", [(MLP, 3), (ConvNet, 2)])
def test_end_to_end_schedule(net, expected):
    refresh, start, end = 3, 2, 9
    model, optimizer = _setup(net, refresh_every=refresh, start_step=start, end_step=end)
    layers = _sparse_layers(model)
    assert len(layers) == expected
    x, y = _task(net)
    losses, prev, changed = [], None, set()
    for t in range(1, 12):
        losses.append(float(_train_step(model, optimizer, x, y)))
        masks = {p: layer_op(layer).mask() for p, layer in layers.items()}
        # The layers' masks are the optimizer's (written by its update).
        flat = jaxnm.current_masks(optimizer.opt_state)
        for p, mk in masks.items():
            np.testing.assert_array_equal(mk, _get(flat, p + ("kernel",)))
        dense = jaxnm.nnx.export_dense(model)
        if t in (1, start, 11):
            np.testing.assert_array_equal(dense(x), model(x))  # forward = masked dense model
        for p, mk in masks.items():
            if t < start:
                assert bool(mk.all()), t
            else:
                assert bool(jaxnm.is_transposable_nm(mk, N, M)), (t, p)
                kernel = _get_layer(dense, p).kernel[...]
                assert not bool(jnp.any(jnp.where(mk, 0, kernel))), (t, p)
        if prev is not None and not (start <= t < end and (t - start) % refresh == 0):
            for p, mk in masks.items():
                np.testing.assert_array_equal(mk, prev[p])  # unchanged off refresh steps
        if prev is not None and any(bool(jnp.any(mk != prev[p])) for p, mk in masks.items()):
            changed.add(t)
        prev = masks
    assert start in changed and changed <= {start, 5, 8}  # masks change at refreshes only
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_gradients_are_straight_through_with_transposed_mask():
    model, optimizer = _setup(MLP, grad_sparsity=None)
    x, y = _task(MLP)
    masks = jaxnm.current_masks(optimizer.opt_state)
    params = nnx.state(model, nnx.Param)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    plain_def, _, plain_rest = nnx.split(jaxnm.nnx.export_dense(model), nnx.Param, ...)

    def loss(p, use_op):
        if use_op:
            mdl = nnx.merge(graphdef, p, rest)
        else:
            mdl = nnx.merge(plain_def, p, plain_rest)
        return jnp.mean((mdl(x) - y) ** 2)

    pure = nnx.as_pure(params)
    g_op = jax.grad(loss)(pure, True)
    g_ste = jax.grad(lambda p: loss(jaxnm.apply_masks(p, masks), False))(pure)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_op, g_ste)


def test_srste_is_added_once():
    """SR-STE lives in jaxnm.sparsify only: the layers' ops add nothing, so one NNX step
    moves a sparsified kernel by exactly ``-(grad + λ·(1 − mask)·w)``."""
    lam = 0.25
    model = MLP(nnx.Rngs(1))
    tx = optax.chain(jaxnm.sparsify(N, M, srste=lam), optax.sgd(1.0))
    optimizer = jaxnm.nnx.Optimizer(model, tx, wrt=nnx.Param)
    jaxnm.nnx.sparsify_model(model, optimizer)
    x, y = _task(MLP)
    mask = jaxnm.current_masks(optimizer.opt_state)["l2"]["kernel"]
    w0 = model.l2.kernel[...]
    grads = nnx.grad(lambda mdl: jnp.mean((mdl(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    expected = w0 - (grads["l2"]["kernel"][...] + lam * jnp.where(mask, 0.0, w0))
    np.testing.assert_allclose(model.l2.kernel[...], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="srste"):
        jaxnm.ops.nm_linear(x, w0[:6], mask[:6], srste=lam)


def test_nnx_orbax_round_trip(tmp_path):
    """Save model + optimizer mid-run, run on, restore the checkpoint over both and rerun:
    the later losses and the final state are bit-identical."""
    import orbax.checkpoint as ocp

    x, y = _task(MLP)
    model, optimizer = _setup(MLP, refresh_every=2)
    for _ in range(2):
        _train_step(model, optimizer, x, y)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "ckpt", nnx.state((model, optimizer)))
        ckpt.wait_until_finished()
        first = [float(_train_step(model, optimizer, x, y)) for _ in range(3)]
        final = nnx.state((model, optimizer))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, final)
        nnx.update((model, optimizer), ckpt.restore(tmp_path / "ckpt", abstract))
    assert int(optimizer.step[...]) == 2
    again = [float(_train_step(model, optimizer, x, y)) for _ in range(3)]
    assert again == first
    jax.tree.map(_assert_equal, nnx.state((model, optimizer)), final)


def _assert_equal(a, b):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(a, b)


def test_errors():
    class WithEmbed(nnx.Module):
        def __init__(self, rngs):
            self.g = nnx.Embed(8, 8, rngs=rngs)

    model = WithEmbed(nnx.Rngs(0))
    tx = jaxnm.sparsify(N, M, include=lambda path, leaf: path[-1] == "embedding")
    opt = jaxnm.nnx.Optimizer(model, tx, wrt=nnx.Param)
    with pytest.raises(ValueError, match="g/embedding"):
        jaxnm.nnx.sparsify_model(model, opt)
    model, optimizer = _setup(MLP, grad_sparsity=None)
    with pytest.raises(ValueError, match="rngs"):
        jaxnm.nnx.sparsify_model(model, optimizer, grad_sparsity=jaxnm.MVUE(2, 4))

    class BadEinsum(nnx.Module):
        def __init__(self, rngs):
            self.e = nnx.Einsum("bd,hd->bh", (8, 8), rngs=rngs)

    model = BadEinsum(nnx.Rngs(0))
    opt = jaxnm.nnx.Optimizer(model, jaxnm.sparsify(N, M), wrt=nnx.Param)
    with pytest.raises(ValueError, match="contracted, output"):
        jaxnm.nnx.sparsify_model(model, opt)


def layer_op(layer):
    for name in ("dot_general", "conv_general_dilated", "einsum_op"):
        op = getattr(layer, name, None)
        if isinstance(op, jaxnm.nnx.NMOp):
            return op
    raise AssertionError(layer)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _get_layer(model, path):
    for key in path:
        model = model[key] if isinstance(key, int) else getattr(model, key)
    return model


def _tree_step(model, optimizer, x, y):
    # Tree mode differentiates every leaf (masks, RNG counts): allow_int gives them float0.
    loss_fn = lambda mdl: jnp.mean((mdl(x) - y) ** 2)  # noqa: E731
    loss, grads = nnx.value_and_grad(loss_fn, graph=False, allow_int=True)(model)
    optimizer.update(model, grads)
    return loss


def test_tree_mode_eager_and_jitted_updates_agree():
    """No aliased Variables: tree mode (graph=False) works and matches graph mode, eagerly and
    under jit; every layer's mask follows the optimizer's refreshes."""
    x, y = _task(MLP)
    runs = {}
    for mode in ("graph", "tree", "eager"):
        # the exhaustive solver: a few ops to dispatch eagerly (greedy's loops: ~30 s, CI budget)
        model, optimizer = _setup(MLP, refresh_every=1, method="exhaustive")
        if mode == "graph":
            step = _train_step
        elif mode == "tree":
            step = nnx.jit(_tree_step, graph=False)
        else:
            step = _tree_step
        losses = [float(step(model, optimizer, x, y)) for _ in range(3)]
        flat = jaxnm.current_masks(optimizer.opt_state)
        for p, layer in _sparse_layers(model).items():
            np.testing.assert_array_equal(layer_op(layer).mask(), _get(flat, p + ("kernel",)))
        runs[mode] = losses
    np.testing.assert_allclose(runs["tree"], runs["graph"], rtol=1e-5)
    np.testing.assert_allclose(runs["eager"], runs["graph"], rtol=1e-5)
    assert runs["graph"][-1] < runs["graph"][0]


def test_views_clones_split_merge():
    x, y = _task(MLP)
    stale = MLP(nnx.Rngs(1))
    early_view = nnx.view(stale)  # made before sparsify_model: must not run dense silently
    optimizer = jaxnm.nnx.Optimizer(
        stale, optax.chain(jaxnm.sparsify(N, M), optax.adam(0.02)), wrt=nnx.Param
    )
    jaxnm.nnx.sparsify_model(stale, optimizer)
    with pytest.raises(ValueError, match="view.*before sparsify_model"):
        early_view(x)
    with pytest.raises(ValueError, match="before sparsify_model"):
        _train_step(early_view, optimizer, x, y)
    model, optimizer = _setup(MLP, refresh_every=1)
    view = nnx.view(model)  # made after: shares the sparse layers and their masks
    _train_step(view, optimizer, x, y)
    _train_step(view, optimizer, x, y)
    np.testing.assert_array_equal(view(x), model(x))
    np.testing.assert_array_equal(view(x), jaxnm.nnx.export_dense(model)(x))
    np.testing.assert_array_equal(nnx.clone(model)(x), model(x))
    graphdef, state = nnx.split(model)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), model(x))
    assert len(jax.tree.leaves(nnx.state(model, jaxnm.nnx.NMMask))) == 3


def test_sparsify_model_needs_its_own_optimizer():
    model = MLP(nnx.Rngs(0))
    with pytest.raises(TypeError, match="jaxnm.nnx.Optimizer"):
        jaxnm.nnx.sparsify_model(model, None)
    plain = nnx.Optimizer(model, jaxnm.sparsify(N, M), wrt=nnx.Param)
    with pytest.raises(TypeError, match="plain nnx.Optimizer"):
        jaxnm.nnx.sparsify_model(model, plain)

    class Wider(nnx.Module):
        def __init__(self, rngs):
            self.l2 = nnx.Linear(16, 32, rngs=rngs)

    other = jaxnm.nnx.Optimizer(Wider(nnx.Rngs(0)), jaxnm.sparsify(N, M), wrt=nnx.Param)
    with pytest.raises(ValueError, match="built for this model"):
        jaxnm.nnx.sparsify_model(model, other)


def test_summary_of_an_nnx_model():
    model, optimizer = _setup(MLP)
    rows = {jaxnm.format_path(r.path): r for r in jaxnm.nnx.sparsity_summary(model).rows}
    assert {k for k, r in rows.items() if r.sparse} == {"l2/kernel", "e/kernel", "out/kernel"}
    assert rows["l2/kernel"].density == 0.5 and rows["l2/kernel"].transposable
    assert "include" in rows["l1/kernel"].reason
    from_state = jaxnm.sparsity_summary(optimizer)  # the optimizer's own view agrees
    assert {jaxnm.format_path(r.path) for r in from_state.sparse} == {
        k for k, r in rows.items() if r.sparse
    }
    assert "l1/kernel" in str(from_state) and "not multiples of m=4" in str(from_state)


class Attention(nnx.Module):
    """A stock nnx.MultiHeadAttention: its LinearGeneral kernels are (in, heads, head_dim)
    for query/key/value and (heads, head_dim, out) for the output projection."""

    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(
            num_heads=4, in_features=16, qkv_features=16, decode=False, rngs=rngs
        )

    def __call__(self, x):
        return self.attn(x)


def test_multi_head_attention_kernels_get_transposable_masks_on_the_flat_view():
    x = jax.random.normal(jax.random.key(0), (2, 4, 16))
    y = jnp.ones((2, 4, 16))
    losses = {}
    for mode in ("graph", "tree"):
        model = Attention(nnx.Rngs(1))
        tx = optax.chain(jaxnm.sparsify(N, M, refresh_every=1), optax.adam(0.02))
        optimizer = jaxnm.nnx.Optimizer(model, tx, wrt=nnx.Param)
        jaxnm.nnx.sparsify_model(model, optimizer, grad_sparsity=MVUE_2_4, rngs=nnx.Rngs(2))
        step = _train_step if mode == "graph" else nnx.jit(_tree_step, graph=False)
        losses[mode] = [float(step(model, optimizer, x, y)) for _ in range(2)]
        masks = jaxnm.current_masks(optimizer.opt_state)["attn"]
        for name, shape in (("query", (16, 4, 4)), ("value", (16, 4, 4)), ("out", (4, 4, 16))):
            mask = masks[name]["kernel"]
            assert mask.shape == shape
            # Grouped along the contraction: transposable 2:4 on the flattened (in, out) view.
            assert bool(jaxnm.is_transposable_nm(mask.reshape(16, 16), N, M)), name
            layer = getattr(model.attn, name)
            np.testing.assert_array_equal(layer_op(layer).mask(), mask)
    np.testing.assert_allclose(losses["tree"], losses["graph"], rtol=1e-5)
    # The forward uses the masks: the exported plain Flax model (masked kernels) agrees.
    dense = jaxnm.nnx.export_dense(model)
    assert not isinstance(dense.attn.query.dot_general, jaxnm.nnx.NMOp)
    np.testing.assert_allclose(dense(x), model(x), rtol=1e-5, atol=1e-6)
    kernel = dense.attn.query.kernel[...]
    np.testing.assert_array_equal(kernel != 0, masks["query"]["kernel"])
    # CompressedNM cannot hold a flattened-view mask: a clear error, not a wrong result.
    with pytest.raises(ValueError, match="flattened"):
        jaxnm.compress_params(nnx.state(model, nnx.Param), optimizer.opt_state)


def test_the_train_step_compiles_as_often_as_the_dense_step():
    """The NNX tutorial's loop with 4:8 greedy masks (init by the NumPy twin) compiles its
    step once, as the dense model's does (the masks used to be committed next to fresh
    params, and the second step compiled the whole step again)."""

    x, y = _task(MLP)

    def step_compiles(sparse: bool) -> int:
        model = MLP(nnx.Rngs(1))
        if sparse:
            tx = optax.chain(jaxnm.sparsify(4, 8, method="greedy"), optax.adam(0.02))
            optimizer = jaxnm.nnx.Optimizer(model, tx, wrt=nnx.Param)
            jaxnm.nnx.sparsify_model(model, optimizer, grad_sparsity=None)
        else:
            optimizer = nnx.Optimizer(model, optax.adam(0.02), wrt=nnx.Param)

        @nnx.jit
        def train_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(lambda mdl: jnp.mean((mdl(x) - y) ** 2))(model)
            optimizer.update(model, grads)
            return loss

        names = []

        class Record(logging.Handler):
            def emit(self, record):
                if record.getMessage().startswith("Compiling jit(train_step"):
                    names.append(record.getMessage())

        handler, logger = Record(), logging.getLogger("jax")
        logger.addHandler(handler)
        try:
            with jax.log_compiles(True):
                for _ in range(3):
                    train_step(model, optimizer, x, y)
        finally:
            logger.removeHandler(handler)
        return len(names)

    assert step_compiles(sparse=False) == 1
    assert step_compiles(sparse=True) == 1
