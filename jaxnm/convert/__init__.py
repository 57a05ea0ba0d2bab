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

from jaxnm.convert.least_squares import (
    conv_gram,
    dense_gram,
    kernel_mask,
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
