"""Flax NNX models of the examples: a small CIFAR-style ResNet and a tiny ViT.

Widths are multiples of 8 so that every hidden ``nnx.Conv`` / ``nnx.Linear`` kernel tiles into
4x4 and 8x8 blocks (2:4, 4:8 and their transposable variants). The stem (1 or 3 input
channels) and the 10-way classifier do not tile by 8, and by jaxnm's default rule such layers
stay dense, as is usual for N:M training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class BasicBlock(nnx.Module):
    """ResNet basic block: two 3x3 convs with batch norm, identity or 1x1-conv shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), strides=stride, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(out_ch, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(out_ch, momentum=0.9, rngs=rngs)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nnx.Conv(
                in_ch, out_ch, (1, 1), strides=stride, use_bias=False, rngs=rngs
            )
            self.shortcut_bn = nnx.BatchNorm(out_ch, momentum=0.9, rngs=rngs)
        else:
            self.shortcut = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut is not None:
            x = self.shortcut_bn(self.shortcut(x))
        return nnx.relu(x + y)


class ResNet(nnx.Module):
    """CIFAR-style ResNet: 3x3 stem, three stages of basic blocks, global average pool.

    Input ``(B, H, W, C)`` float images; output ``(B, num_classes)`` logits. Stages have
    ``width``, ``2 * width`` and ``4 * width`` channels with strides 1, 2, 2.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        width: int = 16,
        blocks_per_stage: int = 1,
        rngs: nnx.Rngs,
    ):
        self.stem = nnx.Conv(in_channels, width, (3, 3), use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        blocks = []
        in_ch = width
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, rngs=rngs))
                in_ch = out_ch
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(in_ch, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


class Attention(nnx.Module):
    """Multi-head self-attention with ``(dim, 3 * dim)`` qkv and ``(dim, dim)`` output kernels.

    Input and output ``(B, T, dim)``. ``causal=True``: token ``t`` attends to tokens
    ``<= t`` (decoder). ``dtype``: computation dtype of the projections (params stay
    float32), e.g. ``jnp.bfloat16``.

    Plain ``nnx.Linear`` projections (rather than ``nnx.MultiHeadAttention``'s per-head
    ``LinearGeneral``) keep the kernels 2-D ``(in, out)``, the layout jaxnm tiles.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        causal: bool = False,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        if dim % heads:
            raise ValueError(f"`dim` (={dim}) must be divisible by `heads` (={heads}).")
        self.heads = heads
        self.causal = causal
        self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads), 3, axis=2)
        mask = nnx.make_causal_mask(jnp.ones((b, t), jnp.int32)) if self.causal else None
        y = nnx.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], mask=mask)
        return self.proj(y.reshape(b, t, d))


class EncoderBlock(nnx.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual.

    ``causal`` and ``dtype`` as in :class:`Attention` (the GPT of :mod:`nmexamples.gpt`
    stacks causal blocks).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        *,
        causal: bool = False,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        self.norm1 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, heads, causal=causal, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))


class ViT(nnx.Module):
    """Tiny vision transformer: linear patch embedding, learned positions, mean pooling.

    Input ``(B, H, W, C)`` with ``H`` and ``W`` multiples of ``patch``; output
    ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        patch: int,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 128,
        rngs: nnx.Rngs,
    ):
        h, w, c = image_shape
        if h % patch or w % patch:
            raise ValueError(f"`patch` (={patch}) must divide the image size {h}x{w}.")
        self.patch = patch
        tokens = (h // patch) * (w // patch)
        self.embed = nnx.Linear(patch * patch * c, dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, dim)))
        self.blocks = nnx.List([EncoderBlock(dim, heads, mlp_dim, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        p = self.patch
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = self.embed(x.reshape(b, (h // p) * (w // p), p * p * c)) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


#: The models :func:`build` knows.
MODELS = ("resnet", "vit")


def build(name: str, image_shape: tuple[int, int, int], num_classes: int, *, seed: int):
    """Builds ``"resnet"`` or ``"vit"`` for images of ``image_shape`` ``(H, W, C)``.

    The ViT uses 2x2 patches on images up to 16 pixels wide (digits: 16 tokens) and 4x4
    patches on larger ones (CIFAR-10: 64 tokens).
    """
    rngs = nnx.Rngs(params=seed)
    if name == "resnet":
        return ResNet(image_shape[-1], num_classes, rngs=rngs)
    if name == "vit":
        patch = 2 if image_shape[0] <= 16 else 4
        return ViT(image_shape, num_classes, patch=patch, rngs=rngs)
    raise ValueError(f"`model` (={name!r}) must be 'resnet' or 'vit'.")
