"""Converting a trained dense model to N:M without retraining (AdaPrune, BRIEF §6).

Per layer: fix an N:M or transposable N:M mask from the magnitudes of the trained kernel,
then re-fit the kept weights so that the layer's output on a small calibration batch stays
as close as possible to the dense layer's output; finally re-estimate batch-norm statistics.

The per-layer re-fit is a masked least-squares problem on the layer's input Gram matrix,
solved exactly (:mod:`jaxnm.convert.least_squares`).

Pure array functions (:mod:`jaxnm.convert.least_squares`: :func:`masked_least_squares`,
:func:`dense_gram`, :func:`conv_gram`, :func:`reconstruction_error`) work on any backend
under ``jit``; the model-level drivers
(:func:`magnitude_prune`, :func:`adaprune`, :func:`recalibrate_batch_norm`) act on Flax NNX
models in place and run eagerly (:mod:`jaxnm.convert.nnx`).
"""

from jaxnm.convert.least_squares import (
    conv_gram,
    dense_gram,
    masked_least_squares,
    reconstruction_error,
)
from jaxnm.convert.nnx import (
    LayerReport,
    adaprune,
    magnitude_prune,
    recalibrate_batch_norm,
    target_layers,
)
from jaxnm.masks.kernel import kernel_mask

__all__ = [
    "LayerReport",
    "adaprune",
    "conv_gram",
    "dense_gram",
    "kernel_mask",
    "magnitude_prune",
    "masked_least_squares",
    "recalibrate_batch_norm",
    "reconstruction_error",
    "target_layers",
]
