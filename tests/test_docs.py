"""Every ```python block of README.md and docs/*.md runs verbatim (CPU).

The blocks of one file run in order in one fresh namespace, as a reader goes through the page
(a block may use what an earlier block of the same page defined; README's blocks are each
self-contained). Commands and output belong in ```bash / ```text blocks, which are not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every ```python block of a Markdown text."""
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in _FENCE.finditer(text)
    ]


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x\n")]
    assert len(python_blocks((ROOT / "README.md").read_text())) >= 2


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_snippets_run(page: Path):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code in python_blocks(page.read_text()):
        name = f"{page.relative_to(ROOT)}, block at line {line}"
        # Line numbers in tracebacks are those of the Markdown file.
        exec(compile("\n" * (line - 1) + code, name, "exec"), namespace)
