"""Flax NNX drivers of the conversion: AdaPrune on a model in place, BN re-estimation.

:func:`magnitude_prune`, :func:`adaprune` and :func:`recalibrate_batch_norm` act on Flax NNX
models in place and run eagerly (they call the model on concrete calibration batches); the
per-layer solve is :mod:`jaxnm.convert.least_squares`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnm._checks import check_nm, tiling_problem
from jaxnm._params import Include, Path, default_include, format_path
from jaxnm.convert.least_squares import (
    conv_gram,
    dense_gram,
    masked_least_squares,
    reconstruction_error,
)
from jaxnm.masks import MaskMethod, Solver
from jaxnm.masks.kernel import kernel_mask


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

    def as_record(self) -> dict:
        """A JSON-ready ``{"path": "a/b", "magnitude_error", "reconstructed_error"}``."""
        return {
            "path": format_path(self.path),
            "magnitude_error": float(self.magnitude_error),
            "reconstructed_error": float(self.reconstructed_error),
        }


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
        problem = tiling_problem(kernel.shape, m, transposable)
        if problem is not None:
            raise ValueError(f"{where} is selected by `include` but does not tile: {problem}.")
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
