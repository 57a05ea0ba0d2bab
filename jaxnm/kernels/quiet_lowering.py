"""Run a kernel's lowering with some warnings silenced, for that kernel only.

jax >= 0.11 warns (``DeprecationWarning``, "The Pallas Triton backend is deprecated") every
time a Triton ``pallas_call`` is *lowered*. Lowering happens when the user's whole program is
lowered (``jax.jit(f).lower``, the first call of a jitted ``f``), long after jaxnm's
function returned, so a ``warnings.catch_warnings()`` around jaxnm's call would not see it,
and a process-wide filter would hide the warning from every other Triton user in the process.

:func:`call_quietly` binds a jaxnm primitive whose lowering rule lowers the wrapped function
inside ``warnings.catch_warnings()`` with the given messages ignored: exactly jaxnm's own
kernel is silenced, at whatever time it is lowered. The primitive evaluates eagerly through
``jax.jit`` (also silenced), has the wrapped function's shapes, and batches under ``vmap`` by
binding itself again on the vmapped function. It has no autodiff rules (the kernels are
differentiated through ``nm_matmul``'s ``custom_vjp``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable

import jax
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

_quiet_p = Primitive("jaxnm_quiet_lowering")


@dataclasses.dataclass(frozen=True)
class _Batched:
    """``jax.vmap(fun, in_axes)`` as a hashable, comparable primitive parameter."""

    fun: Callable[..., jax.Array]
    in_axes: tuple[int | None, ...]

    def __call__(self, *args: jax.Array) -> jax.Array:
        return jax.vmap(self.fun, in_axes=self.in_axes)(*args)


def call_quietly(
    fun: Callable[..., jax.Array], *args: jax.Array, ignore: tuple[str, ...]
) -> jax.Array:
    """``fun(*args)``, with warnings matching ``ignore`` silenced while ``fun`` is lowered.

    Args:
      fun: a hashable function of arrays returning one array (e.g. a frozen dataclass with a
        ``__call__``, or a module-level function); it is traced at lowering time.
      *args: its array arguments.
      ignore: regular expressions matched against the start of warning messages
        (``warnings.filterwarnings(message=...)``), category ``DeprecationWarning``.

    Returns:
      ``fun(*args)``.
    """
    try:
        hash(fun)
    except TypeError as error:
        raise TypeError(f"`fun` must be hashable, got {fun!r}.") from error
    return _quiet_p.bind(*args, fun=fun, ignore=tuple(ignore))


@contextlib.contextmanager
def _silenced(ignore: tuple[str, ...]):
    with warnings.catch_warnings():
        for message in ignore:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        yield


def _impl(*args, fun, ignore):
    with _silenced(ignore):
        return jax.jit(fun)(*args)


def _abstract_eval(*avals, fun, ignore):
    del ignore
    out = jax.eval_shape(fun, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
    return jax.core.ShapedArray(out.shape, out.dtype)


def _lowering(ctx, *args, fun, ignore):
    with _silenced(ignore):
        return mlir.lower_fun(fun, multiple_results=False)(ctx, *args)


def _batch(args, dims, *, fun, ignore):
    in_axes = tuple(dims)  # an unbatched argument has dim None (jax's not_mapped)
    return _quiet_p.bind(*args, fun=_Batched(fun, in_axes), ignore=ignore), 0


_quiet_p.def_impl(_impl)
_quiet_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(_quiet_p, _lowering)
batching.primitive_batchers[_quiet_p] = _batch
