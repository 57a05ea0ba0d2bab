"""Shared code of the jaxnm examples: data sets, models, training loop and checkpoints.

The scripts in ``examples/`` (``train.py``, ``convert.py``, ``plot.py``) put this directory on
``sys.path`` and import from here; nothing in the ``jaxnm`` package depends on it.
"""
