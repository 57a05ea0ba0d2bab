"""Converting a trained dense model to N:M without retraining (AdaPrune, BRIEF §6).

Per layer: fix an N:M or transposable N:M mask from the magnitudes of the trained kernel,
then re-fit the kept weights so that the layer's output on a small calibration batch stays
as close as possible to the dense layer's output; finally re-estimate batch-norm statistics.

For a layer with input features ``X`` (``(P, K)``: tokens or conv patches by the flattened
kernel rows) and dense kernel ``W`` (``(K, out)``), the re-fit solves, for every output
column ``j`` independently, the least-squares problem on the kept rows ``S_j``::

    min_v ||X[:, S_j] v - X w_j||²  + damp · mean(diag G) · ||v||²,    G = Xᵀ X

Only the Gram matrix ``G`` (``(K, K)``, accumulated over calibration batches) is needed:
``X w_j`` is the dense output, so the right-hand side is ``G[S_j] w_j``. The masked normal
equations are solved exactly with a batched Cholesky factorisation (all columns at once, in
chunks), which replaces the reference's 1,000 Adam steps.

Pure array functions (:func:`masked_least_squares`, :func:`dense_gram`, :func:`conv_gram`,
:func:`reconstruction_error`) work on any backend under ``jit``; the model-level drivers
(:func:`magnitude_prune`, :func:`adaprune`, :func:`recalibrate_batch_norm`) act on Flax NNX
models in place and run eagerly (they call the model on concrete calibration batches).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnm._checks import check_nm
from jaxnm._params import Include, Path, default_include
from jaxnm.masks import MaskMethod, Solver, nm_mask, transposable_mask

_HIGHEST = jax.lax.Precision.HIGHEST


class LayerReport(NamedTuple):
    """What the conversion did to one layer.

    Attributes:
      path: the layer's path in the model (as from ``nnx.iter_modules``).
      kernel_shape: shape of its kernel, ``(in, out)`` or ``(kh, kw, in, out)``.
      magnitude_error: relative output error ``‖X(W − W⊙mask)‖² / ‖XW‖²`` on the
        calibration inputs after magnitude pruning alone.
      reconstructed_error: the same after re-fitting the kept weights (``nan`` for
        :func:`magnitude_prune`, which does not re-fit).
    """

    path: Path
    kernel_shape: tuple[int, ...]
    magnitude_error: float
    reconstructed_error: float


# --------------------------------------------------------------------------------------
# Pure array functions
# --------------------------------------------------------------------------------------


def dense_gram(x: jax.Array) -> jax.Array:
    """Gram matrix of the inputs of a dense layer.

    Args:
      x: ``(..., K)`` layer inputs (any floating dtype); leading axes are tokens/batch.

    Returns:
      float32 ``(K, K)`` ``Xᵀ X`` with ``X = x.reshape(-1, K)``.
    """
    x2 = jnp.reshape(x, (-1, jnp.shape(x)[-1])).astype(jnp.float32)
    return jnp.matmul(x2.T, x2, precision=_HIGHEST)


def conv_gram(
    x: jax.Array,
    kernel_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: Any,
    *,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
) -> jax.Array:
    """Gram matrix of the patches a convolution multiplies with its flattened kernel.

    The patches are extracted by convolving ``x`` with an identity kernel of ``kernel_shape``,
    so their feature order is exactly that of ``kernel.reshape(-1, out)`` whatever the
    layout, padding, strides and dilations (``feature_group_count`` must be 1).

    Args:
      x: layer input, e.g. ``(B, H, W, C)`` for NHWC (any floating dtype).
      kernel_shape: ``(*window, in, out)``: the kernel layout must be spatial axes, then
        input and output features (HWIO, as Flax); the input and output layouts may be any
        that ``dimension_numbers`` names.
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers: as in
        ``jax.lax.conv_general_dilated`` (what the layer uses).

    Returns:
      float32 ``(K, K)``, ``K = prod(kernel_shape[:-1])`` (window by input channels).
    """
    kernel_shape = tuple(kernel_shape)
    k = 1
    for size in kernel_shape[:-1]:
        k *= size
    eye = jnp.eye(k, dtype=jnp.float32).reshape(*kernel_shape[:-1], k)
    patches = jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32),
        eye,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        precision=_HIGHEST,
    )
    out_dim = _output_feature_axis(dimension_numbers, patches.ndim)
    patches = jnp.moveaxis(patches, out_dim, -1).reshape(-1, k)
    return jnp.matmul(patches.T, patches, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def masked_least_squares(
    gram: jax.Array,
    w: jax.Array,
    mask: jax.Array,
    *,
    damp: float | jax.Array = 1e-3,
    chunk_size: int | None = None,
) -> jax.Array:
    """Re-fits the kept weights of every output column to match the dense outputs.

    For each column ``j`` solves ``min_v ‖X (m_j ⊙ v) − X w_j‖² + λ ‖m_j ⊙ v‖²`` with
    ``Xᵀ X = gram`` and ``λ = damp · mean(diag(gram))``, through the normal equations
    ``(D G D + λ D + (I − D)) v = D G w_j`` with ``D = diag(m_j)`` (positive definite for
    ``damp > 0``), factorised by Cholesky for all columns at once.

    Args:
      gram: ``(K, K)`` Gram matrix of the layer inputs (see :func:`dense_gram`,
        :func:`conv_gram`); symmetric positive semi-definite.
      w: ``(K, out)`` dense kernel, rows in the order of ``gram`` (float32, bfloat16, float16).
      mask: ``(K, out)`` bool (or 0/1) mask; the N:M groups run along ``K`` (axis 0).
      damp: ridge strength relative to the mean diagonal of ``gram`` (``> 0``).
      chunk_size: solve this many columns at a time (memory ``chunk_size · K²`` floats);
        ``None`` solves all columns together.

    Returns:
      ``(K, out)`` array of ``w``'s dtype: the re-fitted weights, exactly zero where ``mask``
      is False. Computed in float32.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"`gram` must be a square (K, K) matrix, got shape {gram.shape}.")
    if w.ndim != 2 or w.shape[0] != gram.shape[0]:
        raise ValueError(
            f"`w` must have shape (K, out) with K = {gram.shape[0]} (from `gram`), got {w.shape}."
        )
    if mask.shape != w.shape:
        raise ValueError(f"`mask` shape {mask.shape} must equal `w` shape {w.shape}.")
    g = gram.astype(jnp.float32)
    lam = damp * jnp.maximum(jnp.mean(jnp.diag(g)), jnp.finfo(jnp.float32).tiny)
    keep = mask.astype(bool).T  # (out, K)
    dense = w.astype(jnp.float32).T  # (out, K)

    def solve_column(args):
        kept, w_j = args
        d = kept.astype(jnp.float32)
        a = g * d[:, None] * d[None, :] + jnp.diag(lam * d + (1.0 - d))
        rhs = d * jnp.matmul(g, w_j, precision=_HIGHEST)
        factor = jax.scipy.linalg.cho_factor(a, lower=True)
        return jnp.where(kept, jax.scipy.linalg.cho_solve(factor, rhs), 0.0)

    refit = jax.lax.map(solve_column, (keep, dense), batch_size=chunk_size or keep.shape[0])
    return refit.T.astype(w.dtype)


def reconstruction_error(gram: jax.Array, w: jax.Array, w_new: jax.Array) -> jax.Array:
    """Relative output error ``‖X(w − w_new)‖² / ‖X w‖²`` from the Gram matrix.

    Args:
      gram: ``(K, K)`` ``Xᵀ X``.
      w: ``(K, out)`` dense kernel.
      w_new: ``(K, out)`` pruned (and possibly re-fitted) kernel.

    Returns:
      float32 scalar.
    """
    g = gram.astype(jnp.float32)
    delta = (w - w_new).astype(jnp.float32)
    dense = w.astype(jnp.float32)
    num = jnp.sum(delta * jnp.matmul(g, delta, precision=_HIGHEST))
    den = jnp.sum(dense * jnp.matmul(g, dense, precision=_HIGHEST))
    return num / jnp.maximum(den, jnp.finfo(jnp.float32).tiny)


def kernel_mask(
    kernel: jax.Array, n: int, m: int, *, transposable: bool, method: MaskMethod | Solver = "auto"
):
    """The magnitude mask of a Flax kernel: N:M along ``in`` (axis -2), or transposable.

    Args:
      kernel: ``(in, out)`` or ``(kh, kw, in, out)`` floating kernel.
      n, m: keep ``n`` of every ``m``.
      transposable: tile the last two axes into ``m x m`` blocks with ``n`` kept per row and
        column (see :func:`jaxnm.transposable_mask`); otherwise :func:`jaxnm.nm_mask` along
        ``in``.
      method: transposable solver: a name in :data:`jaxnm.masks.SOLVERS` or a solver callable.

    Returns:
      bool array of ``kernel``'s shape.
    """
    if transposable:
        return transposable_mask(kernel, n, m, method=method)
    return nm_mask(kernel, n, m, axis=-2)


# --------------------------------------------------------------------------------------
# Flax NNX drivers
# --------------------------------------------------------------------------------------


def target_layers(
    model: nnx.Module, include: Include | None, *, m: int, transposable: bool
) -> list[tuple[Path, nnx.Module]]:
    """``(path, module)`` of the ``nnx.Linear`` / ``nnx.Conv`` layers whose kernel is selected.

    Args:
      model: Flax NNX model.
      include: predicate ``include(path, kernel) -> bool`` over the kernel's parameter path
        (e.g. ``("blocks", 0, "conv1", "kernel")``) and array, the convention of
        :func:`jaxnm.sparsify`; ``None`` uses sparsify's default rule (kernels whose last two
        axes are multiples of ``m``; only axis -2 when not transposable), so a model converted
        here is sparse in the same layers as one trained with sparsify.
      m: group size.
      transposable: whether the masks will be transposable (for the default rule).

    Raises:
      ValueError: a selected kernel belongs to a grouped convolution or does not tile by m.
    """
    select = default_include(m, transposable) if include is None else include
    layers = []
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, (nnx.Linear, nnx.Conv)):
            continue
        kernel = module.kernel[...]
        if not select((*path, "kernel"), kernel):
            continue
        where = f"layer `{'/'.join(map(str, path))}` (kernel shape {kernel.shape})"
        if isinstance(module, nnx.Conv) and module.feature_group_count != 1:
            raise ValueError(
                f"{where} is selected by `include` but is a grouped convolution "
                f"(feature_group_count={module.feature_group_count}), which is not supported."
            )
        rows, cols = kernel.shape[-2:]
        if rows % m or (transposable and cols % m):
            raise ValueError(
                f"{where} is selected by `include` but does not tile by m={m}; exclude it."
            )
        layers.append((tuple(path), module))
    return layers


def magnitude_prune(
    model: nnx.Module,
    *,
    n: int,
    m: int,
    transposable: bool = True,
    method: MaskMethod | Solver = "auto",
    include: Include | None = None,
) -> dict[Path, jax.Array]:
    """Prunes the selected kernels of ``model`` in place to N:M by magnitude (no re-fit).

    Args:
      model: Flax NNX model; its ``nnx.Linear`` / ``nnx.Conv`` kernels are overwritten
        with ``kernel * mask``.
      n, m: keep ``n`` of every ``m``.
      transposable: transposable N:M masks (default) or plain N:M along ``in``.
      method: transposable solver, see :func:`kernel_mask`.
      include: ``include(path, kernel) -> bool`` picks the layers, as in
        :func:`jaxnm.sparsify`; see :func:`target_layers`.

    Returns:
      ``{path: mask}`` with bool masks of each kernel's shape.
    """
    n, m = check_nm(n, m)
    masks = {}
    for path, module in target_layers(model, include, m=m, transposable=transposable):
        kernel = module.kernel[...]
        mask = kernel_mask(kernel, n, m, transposable=transposable, method=method)
        module.kernel[...] = jnp.where(mask, kernel, jnp.zeros_like(kernel))
        masks[path] = mask
    return masks


def adaprune(
    model: nnx.Module,
    calibration: jax.Array | Iterable[jax.Array],
    *,
    n: int,
    m: int,
    transposable: bool = True,
    method: MaskMethod | Solver = "auto",
    include: Include | None = None,
    damp: float = 1e-3,
    sequential: bool = True,
    chunk_size: int | None = None,
) -> list[LayerReport]:
    """Converts ``model`` in place to N:M: magnitude masks, then least-squares re-fit per layer.

    Calls ``model`` on the calibration batches (eagerly, in whatever train/eval mode it is
    in: use eval mode so batch norm uses its running statistics) and records the inputs of
    each selected layer through its ``dot_general`` / ``conv_general_dilated`` hook.

    Args:
      model: Flax NNX model; selected kernels are overwritten with the re-fitted N:M weights
        (exact zeros outside the mask; biases unchanged).
      calibration: one input batch (e.g. ``(B, H, W, C)`` images) or an iterable of batches.
      n, m: keep ``n`` of every ``m`` along ``in`` (axis -2 of the kernel).
      transposable: transposable N:M masks (default) or plain N:M.
      method: transposable solver, see :func:`kernel_mask`.
      include: ``include(path, kernel) -> bool`` picks the layers, as in
        :func:`jaxnm.sparsify`; see :func:`target_layers`.
      damp: ridge strength of :func:`masked_least_squares`.
      sequential: convert layers one by one in the order the forward pass reaches them,
        each re-fitted on the inputs produced by the already converted layers before it
        (one calibration pass per layer); ``False`` re-fits every layer on the dense
        model's inputs (one pass in all).
      chunk_size: columns solved at a time, see :func:`masked_least_squares`.

    Returns:
      A :class:`LayerReport` per converted layer, in conversion order.
    """
    n, m = check_nm(n, m)
    batches = _as_batches(calibration)
    layers = dict(target_layers(model, include, m=m, transposable=transposable))
    if not layers:
        return []
    grams, order = _collect_grams(model, layers, batches)
    reports = []
    for i, path in enumerate(order):
        if sequential and i > 0:
            grams, _ = _collect_grams(model, {path: layers[path]}, batches)
        module = layers[path]
        kernel = module.kernel[...]
        mask = kernel_mask(kernel, n, m, transposable=transposable, method=method)
        shape = kernel.shape
        w2 = kernel.reshape(-1, shape[-1])
        m2 = mask.reshape(-1, shape[-1])
        gram = grams[path]
        refit = masked_least_squares(gram, w2, m2, damp=damp, chunk_size=chunk_size)
        magnitude = jnp.where(m2, w2, jnp.zeros_like(w2))
        reports.append(
            LayerReport(
                path=path,
                kernel_shape=tuple(shape),
                magnitude_error=float(reconstruction_error(gram, w2, magnitude)),
                reconstructed_error=float(reconstruction_error(gram, w2, refit)),
            )
        )
        module.kernel[...] = refit.reshape(shape)
    return reports


def recalibrate_batch_norm(model: nnx.Module, batches: jax.Array | Iterable[jax.Array]) -> int:
    """Re-estimates the running statistics of every ``nnx.BatchNorm`` of ``model`` in place.

    Runs the model in training mode on each batch and sets each layer's ``mean`` / ``var``
    to the average of the per-batch statistics (the cumulative average PyTorch uses with
    ``momentum=None``). Parameters, other variables and the modules' settings are restored.

    Args:
      model: Flax NNX model.
      batches: one input batch or an iterable of batches (e.g. ``(B, H, W, C)`` images).

    Returns:
      The number of batch-norm layers updated.
    """
    norms = [mod for _, mod in nnx.iter_modules(model) if isinstance(mod, nnx.BatchNorm)]
    if not norms:
        return 0
    saved = [(mod.momentum, mod.use_running_average) for mod in norms]
    others = nnx.state(model, nnx.Not(nnx.BatchStat))
    sums = [(jnp.zeros_like(mod.mean[...]), jnp.zeros_like(mod.var[...])) for mod in norms]
    count = 0
    try:
        for mod in norms:
            mod.momentum = 0.0
            mod.use_running_average = False
        for x in _as_batches(batches):
            model(x)
            sums = [
                (s + mod.mean[...], v + mod.var[...])
                for (s, v), mod in zip(sums, norms, strict=True)
            ]
            count += 1
    finally:
        for mod, (momentum, use_running_average) in zip(norms, saved, strict=True):
            mod.momentum = momentum
            mod.use_running_average = use_running_average
        nnx.update(model, others)
    if count == 0:
        raise ValueError("`batches` is empty: no statistics to estimate.")
    for (s, v), mod in zip(sums, norms, strict=True):
        mod.mean[...] = s / count
        mod.var[...] = v / count
    return len(norms)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _as_batches(batches) -> list[jax.Array]:
    if hasattr(batches, "shape") and hasattr(batches, "dtype"):
        return [batches]
    return list(batches)


def _collect_grams(
    model: nnx.Module, layers: dict[Path, nnx.Module], batches: list[jax.Array]
) -> tuple[dict[Path, jax.Array], list[Path]]:
    """Runs ``model`` on ``batches``; returns each layer's input Gram and the call order."""
    grams: dict[Path, jax.Array] = {}
    order: list[Path] = []
    originals = {}
    for path, module in layers.items():
        hook = "conv_general_dilated" if isinstance(module, nnx.Conv) else "dot_general"
        original = getattr(module, hook)
        originals[path] = (module, hook, original)
        setattr(module, hook, _recorder(path, original, isinstance(module, nnx.Conv), grams, order))
    try:
        for x in batches:
            model(x)
    finally:
        for module, hook, fn in originals.values():
            setattr(module, hook, fn)
    missing = [p for p in layers if p not in grams]
    if missing:
        raise ValueError(f"the calibration forward pass never called the layers {missing}.")
    return grams, order


def _recorder(path: Path, original: Callable, is_conv: bool, grams: dict, order: list) -> Callable:
    """Wraps a layer's ``dot_general`` / ``conv_general_dilated`` to accumulate its input Gram."""

    def record(lhs, rhs, *args, **kwargs):
        if is_conv:
            window_strides, padding = args[:2]
            gram = conv_gram(
                lhs,
                rhs.shape,
                window_strides,
                padding,
                lhs_dilation=kwargs.get("lhs_dilation"),
                rhs_dilation=kwargs.get("rhs_dilation"),
                dimension_numbers=kwargs.get("dimension_numbers"),
            )
        else:
            gram = dense_gram(lhs)
        if path not in grams:
            order.append(path)
            grams[path] = gram
        else:
            grams[path] = grams[path] + gram
        return original(lhs, rhs, *args, **kwargs)

    return record


def _output_feature_axis(dimension_numbers, ndim: int) -> int:
    if dimension_numbers is None:
        return 1  # lax default: NCHW output
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        return dimension_numbers.out_spec[1]
    spec = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    return spec.out_spec[1]
