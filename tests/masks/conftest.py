"""Puts ``tests/masks/`` on ``sys.path`` so its tests share :mod:`tile_kinds`."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
