"""Makes the ``jaxnm.masks`` subpackage callable: ``jaxnm.masks(opt_state)``.

``jaxnm.masks`` names two things: the subpackage of mask functions and solvers
(``jaxnm.masks.nm_mask``, ``import jaxnm.masks.greedy``) and the reader of the current
masks of an optimizer state (issue 4 fixes ``jaxnm.masks(opt_state)``). A plain function
bound to the attribute would be replaced by the subpackage whenever Python binds the
submodule to its parent, and would break ``jaxnm.masks.<submodule>`` attribute access.
Instead the subpackage's module object gets this ``ModuleType`` subclass (the documented
way to customise a module, see ``sys.modules[__name__].__class__`` in the Python data
model), so ``jaxnm.masks`` is one object that is both the package and the function,
whatever is imported and in which order.
"""

from __future__ import annotations

import types
from typing import Any


class CallableMasksModule(types.ModuleType):
    """Module type of ``jaxnm.masks``; calling it is :func:`jaxnm.current_masks`."""

    def __call__(self, opt_state: Any) -> Any:
        """``jaxnm.masks(opt_state)``: the current masks of a :func:`jaxnm.sparsify` state.

        See :func:`jaxnm.current_masks`.
        """
        from jaxnm._state import current_masks

        return current_masks(opt_state)


def make_callable(module: types.ModuleType) -> None:
    """Switches ``module`` (the ``jaxnm.masks`` package) to :class:`CallableMasksModule`."""
    if not isinstance(module, CallableMasksModule):
        module.__class__ = CallableMasksModule
