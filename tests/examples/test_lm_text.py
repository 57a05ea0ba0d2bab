"""Tests of the language model's text corpora (``nmexamples.text``): the built-in standard
library corpus is deterministic, and the loader reads files, directories and ``.jsonl`` the
tests write, including empty files and non-UTF-8 bytes, with clear errors on bad input."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from nmexamples import text


def test_stdlib_corpus_is_deterministic():
    first = text.stdlib_files()
    second = text.stdlib_files()
    assert first == second and len(first) > 100
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = [p.relative_to(root).as_posix() for p in first]
    assert rel == sorted(rel)
    assert not any(
        part in ("test", "tests", "idlelib", "site-packages")
        for r in rel
        for part in r.split("/")[:-1]
    )
    a, b = text.load("stdlib"), text.load("stdlib")
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    np.testing.assert_array_equal(a.val, b.val)
    assert a.info["python"] and a.info["files"] == len(first)
    assert a.train.dtype == np.uint8 and a.val.size > 0.05 * a.train.size


def test_pydoc_topics_corpus():
    c = text.load("pydoc-topics")
    assert c.info["documents"] > 10 and c.train.size > 100_000
    assert b"the" in c.train.tobytes()


def test_directory_with_empty_and_non_utf8_files(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"second \xff\xfe not utf-8")
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third")
    (tmp_path / ".hidden").write_text("never read")
    c = text.load(tmp_path, val_fraction=0.25)
    joined = c.train.tobytes() + c.val.tobytes()
    assert joined == b"first file\nsecond \xff\xfe not utf-8\nthird"  # sorted, raw bytes
    assert c.info["documents"] == 3 and c.info["split"].startswith("by bytes")
    assert c.sha256 == text.load(tmp_path, val_fraction=0.25).sha256
    (tmp_path / "a.txt").write_text("first filE")
    assert c.sha256 != text.load(tmp_path, val_fraction=0.25).sha256


def test_split_by_document(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02d}.txt").write_text(f"doc {i}")
    c = text.load(tmp_path)
    assert c.val.tobytes() == b"doc 9\ndoc 19"  # every 10th file
    assert b"doc 9" not in c.train.tobytes() and c.train.tobytes().startswith(b"doc 0\ndoc 1")


def test_single_file_and_jsonl(tmp_path):
    f = tmp_path / "book.txt"
    f.write_bytes(bytes(range(256)) * 4)
    c = text.load(f)
    assert c.train.size + c.val.size == 1024 and c.val.size == 102
    j = tmp_path / "data.jsonl"
    j.write_text("\n".join(json.dumps({"text": f"record {i}", "id": i}) for i in range(3)) + "\n\n")
    c = text.load(j, val_fraction=0.5)
    assert c.train.tobytes() + c.val.tobytes() == b"record 0\nrecord 1\nrecord 2"
    j.write_text(json.dumps({"body": "a longer body"}) + "\n")
    assert text.load(j, text_field="body").info["documents"] == 1
    with pytest.raises(ValueError, match="line 1 has no string field `text_field`"):
        text.load(j)
    j.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        text.load(j)


def test_bad_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in corpus"):
        text.load(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no text"):
        text.load(tmp_path / "empty")
    (tmp_path / "empty" / "zero.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="holds no text"):
        text.load(tmp_path / "empty")
    (tmp_path / "one.txt").write_bytes(b"x")
    with pytest.raises(ValueError, match="too small to split"):
        text.load(tmp_path / "one.txt")
    with pytest.raises(ValueError, match="val_fraction"):
        text.load("stdlib", val_fraction=1.0)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "dataset_info.json").write_text("{}")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            text.load(tmp_path / "hf")


def test_windows():
    tokens = np.arange(50, dtype=np.uint8)
    w = text.windows(tokens, 4, 10, np.random.default_rng(0))
    assert w.shape == (4, 10) and w.dtype == np.int32
    np.testing.assert_array_equal(np.diff(w, axis=1), 1)  # consecutive bytes
    np.testing.assert_array_equal(w, text.windows(tokens, 4, 10, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="shorter than one window"):
        text.windows(tokens[:5], 1, 10, np.random.default_rng(0))
    e = text.eval_windows(tokens, 10, 30)
    np.testing.assert_array_equal(e[:, 0], [0, 20, 40])  # spread over the whole text
    with pytest.raises(ValueError, match="shorter than one window"):
        text.eval_windows(tokens[:5], 10, 30)
