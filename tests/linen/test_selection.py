"""jaxnm.linen.include (jaxnm/linen/selection.py): only the kernels of layers that run jaxnm's
op are selected; attention kernels on their flattened (in, out) view."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnm
import jaxnm.linen as jl

N, M = 2, 4


def test_plain_flax_layers_are_not_selected_by_linen_include():
    class Mixed(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(jl.Dense(16, name="nm")(x))
            return nn.Dense(8, name="plain")(h)  # ignores masks: must not be sparsified

    model, x = Mixed(), jnp.ones((2, 8))
    params = model.init(jax.random.key(0), x)["params"]
    select = jl.include(model, x, m=M)
    masks = jaxnm.current_masks(jaxnm.sparsify(N, M, include=select).init(params))
    assert masks["nm"]["kernel"] is not None and masks["plain"]["kernel"] is None
    # The default selection would take the plain kernel too; the summary shows which.
    default = jaxnm.sparsity_summary(jaxnm.sparsify(N, M).init(params))
    assert {jaxnm.format_path(r.path) for r in default.sparse} == {"nm/kernel", "plain/kernel"}


def test_multi_head_dot_product_attention_on_the_flat_view():
    """nn.MultiHeadDotProductAttention with jaxnm's op in its DenseGeneral seams, selected by
    jl.include: the (in, heads, head_dim) and (heads, head_dim, out) kernels get transposable
    masks on their flattened (in, out) view, and the forward uses them."""

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.MultiHeadDotProductAttention(
                num_heads=4,
                qkv_features=16,
                qkv_dot_general_cls=jl.NMDotGeneral,
                out_dot_general_cls=jl.NMDotGeneral,
                name="attn",
            )(x)

    model, x = Attention(), jax.random.normal(jax.random.key(0), (2, 4, 16))
    params = model.init(jax.random.key(1), x)["params"]
    tx = optax.chain(jaxnm.sparsify(N, M, include=jl.include(model, x, m=M)), optax.sgd(0.1))
    opt_state = tx.init(params)
    masks = jaxnm.current_masks(opt_state)["attn"]
    for name, shape in (("query", (16, 4, 4)), ("key", (16, 4, 4)), ("out", (4, 4, 16))):
        mask = masks[name]["kernel"]
        assert mask.shape == shape
        assert bool(jaxnm.is_transposable_nm(mask.reshape(16, 16), N, M)), name

    def loss(p, opt_state):
        return jnp.mean(model.apply(jl.variables(p, opt_state), x) ** 2)

    grads = jax.jit(jax.grad(loss))(params, opt_state)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    exported = jaxnm.apply_masks(params, jaxnm.current_masks(opt_state))
    plain = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16)
    np.testing.assert_allclose(
        model.apply(jl.variables(params, opt_state), x),
        plain.apply({"params": exported["attn"]}, x),
        rtol=1e-5,
        atol=1e-6,
    )
    # The default selection knows Flax's attention projections (query/key/value/out): the
    # same views, the same masks.
    state = jaxnm.sparsify(N, M).init(params)
    for a, b in zip(
        jax.tree.leaves(jaxnm.current_masks(state)),
        jax.tree.leaves(jaxnm.current_masks(opt_state)),
        strict=True,
    ):
        assert a.shape == b.shape
    model.apply(jl.variables(params, state), x)
    # A rank-3 kernel the selection cannot read as a view: the op refuses it instead of
    # running masks along the wrong axes.
    renamed = {"attn": {f"{k}_proj": v for k, v in params["attn"].items()}}
    state = jaxnm.sparsify(N, M).init(renamed)
    masks = jaxnm.current_masks(state)["attn"]
    assert masks["query_proj"]["kernel"].shape == (16, 4, 4)
    fake = {"params": params, jl.MASKS: {"attn": {k[:-5]: v for k, v in masks.items()}}}
    with pytest.raises(ValueError, match="jaxnm.linen.include"):
        model.apply(fake, x)
