"""Puts ``examples/`` on ``sys.path`` so the tests can import the scripts and ``nmexamples``."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
