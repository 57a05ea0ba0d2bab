"""Byte-level text corpora for the language-model example: built in, or any text on disk.

Nothing here touches the network. Built-in corpora (text every Python installation has and
no one on this project wrote):

* ``"stdlib"`` (default): the ``.py`` sources of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``), without ``site-packages``, test suites
  (``test``/``tests`` directories) and ``idlelib``: ≈ 11 MB in 674 files on CPython 3.11.
  Real code by many authors, dense with English docstrings and comments. The file list is
  sorted; every ``VAL_EVERY``-th file is held out for validation, so validation text comes
  from files the model never sees.
* ``"pydoc-topics"``: ``pydoc_data.topics`` (the language reference topics behind
  ``help()``), ≈ 465 KB of English prose in 79 topics, split by topic the same way.

User text (``data`` is a path):

* a file: ``.jsonl`` (one JSON object per line, the text in ``text_field``), or any other
  file read as raw bytes (``.txt``, ``.md``, source code, ...);
* a directory: every regular, non-hidden file below it (sorted relative paths, read as
  raw bytes; ``.jsonl`` files as above);
* a Hugging Face ``datasets`` directory written by ``save_to_disk`` (needs ``datasets``,
  which this project does not install; a clear error says so when it is missing).

Bytes are used as they are: the model is byte-level (256 symbols), so non-UTF-8 bytes are
valid input. Documents are joined with ``b"\\n"``. With at least ``VAL_EVERY`` non-empty
documents the split is by document, otherwise the last ``val_fraction`` of the bytes are the
validation text. Every corpus carries the SHA-256 of its documents (in order) and, for the
built-in ones, the Python version, so runs record exactly what they trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

BUILTIN = ("stdlib", "pydoc-topics")
VAL_EVERY = 10  # every 10th document (sorted order) is validation text
SEPARATOR = b"\n"
_STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib"})


class Corpus(NamedTuple):
    """A byte-level train/validation split held in host memory.

    Attributes:
      train: uint8 ``(N_train,)`` training bytes.
      val: uint8 ``(N_val,)`` validation bytes.
      name: ``"stdlib"``, ``"pydoc-topics"`` or the path it was read from.
      sha256: hex SHA-256 over the documents in order (each one's length and bytes).
      info: JSON-able facts: number of documents, the split rule, the Python version for
        built-in corpora.
    """

    train: np.ndarray
    val: np.ndarray
    name: str
    sha256: str
    info: dict


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The sorted ``.py`` files of the standard library corpus below ``root``.

    Args:
      root: the standard library directory (default: the running interpreter's).

    Returns:
      Absolute paths sorted by their path relative to ``root``; files under
      ``site-packages``, ``test``/``tests`` directories and ``idlelib`` are left out.
    """
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not root.is_dir():
        raise FileNotFoundError(f"`root` (={str(root)!r}) is not a directory.")
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _STDLIB_EXCLUDED_DIRS]  # not walked
        files += [Path(directory) / f for f in names if f.endswith(".py")]
    return sorted((f for f in files if f.is_file()), key=lambda f: f.relative_to(root).as_posix())


def load(
    data: str | Path = "stdlib",
    *,
    text_field: str = "text",
    val_fraction: float = 0.1,
) -> Corpus:
    """Loads a built-in corpus (``"stdlib"``, ``"pydoc-topics"``) or the text at a path.

    Args:
      data: a name in ``BUILTIN``, or a file / directory path (see the module docstring).
      text_field: the key holding the text in ``.jsonl`` records and ``datasets`` rows.
      val_fraction: validation share of the bytes when the text has fewer than
        ``VAL_EVERY`` documents (split by bytes, validation last).

    Returns:
      A :class:`Corpus`.

    Raises:
      FileNotFoundError: ``data`` is neither a built-in name nor an existing path.
      ValueError: no non-empty document, malformed ``.jsonl``, or a split with an empty side.
      ImportError: a ``datasets`` directory without the ``datasets`` package.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"`val_fraction` (={val_fraction}) must lie in (0, 1).")
    info: dict = {}
    if data == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = stdlib_files(root)
        docs = [f.read_bytes() for f in files]
        info = {"root": str(root), "files": len(files)}
    elif data == "pydoc-topics":
        from pydoc_data.topics import topics

        docs = [topics[k].encode("utf-8") for k in sorted(topics)]
    else:
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(
                f"`data` (={str(data)!r}) is neither a built-in corpus {list(BUILTIN)} nor an "
                "existing file or directory."
            )
        docs = list(_read_path(path, text_field))
    if data in BUILTIN:
        info["python"] = platform.python_version()
        info["implementation"] = platform.python_implementation()
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"`data` (={str(data)!r}) holds no text (no non-empty document).")
    train, val, split = _split(docs, val_fraction)
    if not any(train) or not any(val):
        raise ValueError(
            f"`data` (={str(data)!r}) is too small to split into training and validation "
            f"text ({sum(map(len, docs))} bytes)."
        )
    info.update(documents=len(docs), split=split)
    return Corpus(
        train=np.frombuffer(SEPARATOR.join(train), np.uint8),
        val=np.frombuffer(SEPARATOR.join(val), np.uint8),
        name=str(data),
        sha256=documents_sha256(docs),
        info=info,
    )


def documents_sha256(docs: list[bytes]) -> str:
    """Hex SHA-256 of a document list: each document's 8-byte length, then its bytes."""
    h = hashlib.sha256()
    for d in docs:
        h.update(len(d).to_bytes(8, "little"))
        h.update(d)
    return h.hexdigest()


def windows(
    tokens: np.ndarray, batch_size: int, length: int, rng: np.random.Generator
) -> np.ndarray:
    """``batch_size`` random windows of ``length`` consecutive tokens.

    Args:
      tokens: uint8 ``(N,)`` with ``N >= length``.
      batch_size: number of windows.
      length: window length (context + 1 for next-byte targets).
      rng: NumPy generator (seeded per step by the caller, for reproducible runs).

    Returns:
      int32 ``(batch_size, length)``.
    """
    if len(tokens) < length:
        raise ValueError(
            f"the text ({len(tokens)} bytes) is shorter than one window ({length} bytes); "
            "use more text or a shorter `context`."
        )
    starts = rng.integers(0, len(tokens) - length + 1, size=batch_size)
    return tokens[starts[:, None] + np.arange(length)[None]].astype(np.int32)


def eval_windows(tokens: np.ndarray, length: int, max_tokens: int) -> np.ndarray:
    """Evenly spaced, non-overlapping windows of ``length`` tokens covering all of ``tokens``.

    Args:
      tokens: uint8 ``(N,)``.
      length: window length (context + 1).
      max_tokens: score at most this many tokens (at least one window).

    Returns:
      int32 ``(K, length)`` with ``K = min(N, max_tokens) // length >= 1``; the window
      starts are spread evenly from the first to the last possible one, so a small
      evaluation budget still samples the whole validation text.
    """
    count = min(len(tokens), max(max_tokens, length)) // length
    if count == 0:
        raise ValueError(
            f"the validation text ({len(tokens)} bytes) is shorter than one window "
            f"({length} bytes); use more text or a shorter `context`."
        )
    stride = (len(tokens) - length) // max(count - 1, 1) if count > 1 else 0
    starts = np.arange(count) * stride
    return tokens[starts[:, None] + np.arange(length)[None]].astype(np.int32)


def _split(docs: list[bytes], val_fraction: float) -> tuple[list[bytes], list[bytes], str]:
    if len(docs) >= VAL_EVERY:
        val = docs[VAL_EVERY - 1 :: VAL_EVERY]
        train = [d for i, d in enumerate(docs) if (i + 1) % VAL_EVERY]
        return train, val, f"by document: every {VAL_EVERY}th is validation"
    joined = SEPARATOR.join(docs)
    cut = int(round(len(joined) * (1.0 - val_fraction)))
    return [joined[:cut]], [joined[cut:]], f"by bytes: last {val_fraction:g} is validation"


def _read_path(path: Path, text_field: str) -> Iterator[bytes]:
    if path.is_file():
        yield from _read_file(path, text_field)
        return
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        yield from _read_hf_dataset(path, text_field)
        return
    files = sorted(
        (
            p
            for p in path.rglob("*")
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
        ),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    for f in files:
        yield from _read_file(f, text_field)


def _read_file(path: Path, text_field: str) -> Iterator[bytes]:
    if path.suffix != ".jsonl":
        yield path.read_bytes()
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{str(path)!r} line {number} is not JSON: {e}") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(
                    f"{str(path)!r} line {number} has no string field `text_field` "
                    f"(={text_field!r})."
                )
            yield record[text_field].encode("utf-8", errors="surrogateescape")


def _read_hf_dataset(path: Path, text_field: str) -> Iterator[bytes]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"`data` (={str(path)!r}) is a Hugging Face `datasets` directory (save_to_disk); "
            "reading it needs `pip install datasets`, or export the text to .txt/.jsonl."
        ) from None
    ds = datasets.load_from_disk(str(path))
    splits = [ds[k] for k in sorted(ds)] if isinstance(ds, datasets.DatasetDict) else [ds]
    for split in splits:
        if text_field not in split.column_names:
            raise ValueError(
                f"`text_field` (={text_field!r}) is not a column of {str(path)!r} "
                f"(columns: {split.column_names})."
            )
        for text in split[text_field]:
            yield text.encode("utf-8", errors="surrogateescape")
