"""A byte-level decoder-only transformer (GPT) in Flax NNX, and what N:M makes sparse in it.

Pre-LayerNorm causal blocks (:class:`nmexamples.models.EncoderBlock` with ``causal=True``:
multi-head self-attention with a ``(dim, 3 dim)`` qkv and a ``(dim, dim)`` output
projection, then a ``(dim, mlp)`` / ``(mlp, dim)`` GELU MLP), learned positions, a final
LayerNorm and **tied** input/output embeddings (the head is ``embed.attend``, the
``(256, dim)`` embedding table used transposed). Tying keeps the ``256 x dim`` head out of the
parameter count of a small model and is the GPT-2 choice.

What is sparse: jaxnm's default rule sparsifies parameters named ``kernel`` whose last two
axes tile by ``m``, i.e. the four ``nnx.Linear`` kernels of every block. The embedding
table (an ``nnx.Embed`` ``embedding``, which also serves as the head), the positions and the
LayerNorms stay dense. :func:`sparse_fractions` says what share of the parameters and of
the matmul FLOPs that is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnm import key_path_names
from nmexamples.models import EncoderBlock

VOCAB = 256  # bytes


class GPT(nnx.Module):
    """Byte-level GPT.

    Input int32 ``(B, T)`` byte values with ``T <= context``; output float32
    ``(B, T, 256)`` next-byte logits.
    """

    def __init__(
        self,
        *,
        context: int = 128,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        for name, value in (("context", context), ("dim", dim), ("depth", depth)):
            if value < 1:
                raise ValueError(f"`{name}` (={value}) must be positive.")
        self.context = context
        self.embed = nnx.Embed(VOCAB, dim, dtype=dtype, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, dim)))
        self.blocks = nnx.List(
            [
                EncoderBlock(dim, heads, mlp_ratio * dim, causal=True, dtype=dtype, rngs=rngs)
                for _ in range(depth)
            ]
        )
        self.norm = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        t = tokens.shape[-1]
        if t > self.context:
            raise ValueError(f"input length {t} exceeds `context` (={self.context}).")
        x = self.embed(tokens) + self.pos[...][:t].astype(self.embed.dtype or jnp.float32)
        for block in self.blocks:
            x = block(x)
        return self.embed.attend(self.norm(x)).astype(jnp.float32)


def sparse_fractions(model: GPT, sparse_paths: set[tuple]) -> dict:
    """Shares of the parameters and of the forward matmul FLOPs that are N:M sparse.

    Args:
      model: the GPT.
      sparse_paths: parameter paths (tuples of attribute names / indices, as in
        ``jaxnm.sparsify``'s ``include``) of the sparsified kernels.

    Returns:
      ``{"params": int, "sparse_params": int, "param_fraction": float,
      "matmul_flops_per_token": int, "sparse_flops_per_token": int, "flop_fraction": float}``
      where FLOPs count ``2 · in · out`` per token for every ``nnx.Linear``, ``2 · 256 · dim``
      for the tied head and ``4 · context · dim`` per block for the attention scores and
      values (full, unmasked ``T x T`` products as XLA runs them), at full context.
    """
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    params = {key_path_names(p): x for p, x in flat}
    total = sum(int(x.size) for x in params.values())
    sparse = sum(int(params[p].size) for p in params if p in sparse_paths)
    flops = sparse_flops = 0
    for path, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Linear):
            f = 2 * module.in_features * module.out_features
            flops += f
            sparse_flops += f if (*path, "kernel") in sparse_paths else 0
    dim = model.embed.features
    flops += 2 * VOCAB * dim + len(model.blocks) * 4 * model.context * dim
    return {
        "params": total,
        "sparse_params": sparse,
        "param_fraction": sparse / total,
        "matmul_flops_per_token": flops,
        "sparse_flops_per_token": sparse_flops,
        "flop_fraction": sparse_flops / flops,
    }
