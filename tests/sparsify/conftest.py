"""Puts ``tests/sparsify/`` on ``sys.path`` so its tests share :mod:`toy_params`."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
