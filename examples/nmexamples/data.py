"""Image classification data for the examples: scikit-learn's bundled digits and CIFAR-10.

Nothing here touches the network. ``digits`` ships inside scikit-learn (1,797 grayscale 8x8
images, 10 classes); CIFAR-10 is read from a directory that holds the standard Python pickle
batches (``data_batch_1`` .. ``data_batch_5`` and ``test_batch``).

Images are returned channels-last, ``(N, H, W, C)`` float32, standardised with the training
split's per-channel mean and standard deviation; labels are ``(N,)`` int32.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_SHAPE = (3, 32, 32)


class Dataset(NamedTuple):
    """A train/test split held in host memory.

    Attributes:
      x_train: float32 ``(N_train, H, W, C)`` standardised images.
      y_train: int32 ``(N_train,)`` labels in ``[0, num_classes)``.
      x_test: float32 ``(N_test, H, W, C)`` images, standardised with the training statistics.
      y_test: int32 ``(N_test,)`` labels.
      num_classes: number of classes.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def load_digits(*, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits, split into train and test (stratified).

    Args:
      test_fraction: share of each class held out for testing.
      split_seed: seed of the split (fixed by default so that runs with different
        training seeds are evaluated on the same test images).

    Returns:
      A :class:`Dataset` with images of shape ``(N, 8, 8, 1)``.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` (={test_fraction}) must lie in (0, 1).")
    bunch = sk_load_digits()
    images = bunch.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    labels = bunch.target.astype(np.int32)
    rng = np.random.default_rng(split_seed)
    test_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test_idx.append(idx[: int(round(test_fraction * idx.size))])
    test = np.zeros(labels.size, dtype=bool)
    test[np.concatenate(test_idx)] = True
    return _standardise(images[~test], labels[~test], images[test], labels[test], 10)


def load_cifar10(data_dir: str | Path) -> Dataset:
    """CIFAR-10 from the standard Python pickle batches in ``data_dir``.

    Each batch is a pickled dict with ``b"data"`` (uint8 ``(N, 3072)``, rows holding the
    red, green then blue 32x32 planes) and ``b"labels"`` (a list of ``N`` ints).

    Args:
      data_dir: directory holding ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``
        (the contents of ``cifar-10-batches-py``).

    Returns:
      A :class:`Dataset` with images of shape ``(N, 32, 32, 3)``.

    Raises:
      FileNotFoundError: a batch file is missing (the message lists which).
      ValueError: a batch file does not have the expected keys or shapes.
    """
    data_dir = Path(data_dir)
    missing = [f for f in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE) if not (data_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"`data_dir` (={str(data_dir)!r}) lacks the CIFAR-10 pickle batches {missing}; "
            "expected the contents of cifar-10-batches-py (this example never downloads)."
        )
    train = [read_cifar10_batch(data_dir / f) for f in CIFAR10_TRAIN_FILES]
    x_test, y_test = read_cifar10_batch(data_dir / CIFAR10_TEST_FILE)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _standardise(x_train, y_train, x_test, y_test, 10)


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 pickle batch.

    Returns:
      ``(images, labels)``: float32 ``(N, 32, 32, 3)`` with values in ``[0, 255]`` and
      int32 ``(N,)``.
    """
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{str(path)!r} is not a CIFAR-10 batch (needs b'data' and b'labels').")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int32)
    size = int(np.prod(CIFAR10_SHAPE))
    if data.ndim != 2 or data.shape[1] != size or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{str(path)!r}: b'data' has shape {data.shape} and b'labels' {labels.shape}; "
            f"expected (N, {size}) and (N,)."
        )
    images = data.reshape(-1, *CIFAR10_SHAPE).transpose(0, 2, 3, 1).astype(np.float32)
    return images, labels


#: The data sets :func:`load` knows.
DATASETS = ("digits", "cifar10")


def load(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Loads ``"digits"`` or ``"cifar10"`` (the latter from ``data_dir``)."""
    if name == "digits":
        return load_digits()
    if name == "cifar10":
        if data_dir is None:
            raise ValueError("`data_dir` is required for `data` (='cifar10').")
        return load_cifar10(data_dir)
    raise ValueError(f"`data` (={name!r}) must be 'digits' or 'cifar10'.")


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int | None, drop_last: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterates over ``(x, y)`` in mini-batches.

    Args:
      x: ``(N, ...)`` inputs.
      y: ``(N,)`` labels.
      batch_size: examples per batch.
      seed: shuffle with ``numpy.random.default_rng(seed)``; ``None`` keeps the order.
        Seeding per epoch makes a resumed run see the same batches as an uninterrupted one.
      drop_last: drop the final incomplete batch (keeps shapes static for ``jit``).
    """
    if batch_size <= 0:
        raise ValueError(f"`batch_size` (={batch_size}) must be positive.")
    order = np.arange(len(x)) if seed is None else np.random.default_rng(seed).permutation(len(x))
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def augment(x: np.ndarray, rng: np.random.Generator, *, shift: int, flip: bool) -> np.ndarray:
    """Random translations by up to ``shift`` pixels (edge padding) and optional mirroring.

    Args:
      x: ``(B, H, W, C)`` images.
      rng: NumPy generator (seeded per epoch by the caller for reproducible runs).
      shift: largest translation in pixels along each spatial axis.
      flip: mirror each image left-right with probability 1/2 (not for digits).

    Returns:
      ``(B, H, W, C)`` augmented images, ``x``'s dtype.
    """
    b, h, w, _ = x.shape
    if shift:
        padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
        dy, dx = rng.integers(0, 2 * shift + 1, size=(2, b))
        rows = dy[:, None] + np.arange(h)[None]  # (B, H)
        cols = dx[:, None] + np.arange(w)[None]  # (B, W)
        x = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        mirror = rng.random(b) < 0.5
        x = np.where(mirror[:, None, None, None], x[:, :, ::-1], x)
    return x


def augmentation(name: str) -> dict:
    """Augmentation settings of a data set: ``{"shift": int, "flip": bool}``."""
    return {"digits": {"shift": 1, "flip": False}, "cifar10": {"shift": 4, "flip": True}}[name]


def num_batches(n: int, batch_size: int, *, drop_last: bool) -> int:
    """Number of batches :func:`batches` yields for ``n`` examples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def _standardise(x_train, y_train, x_test, y_test, num_classes: int) -> Dataset:
    mean = x_train.mean(axis=(0, 1, 2), keepdims=True)
    std = x_train.std(axis=(0, 1, 2), keepdims=True) + 1e-6
    return Dataset(
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_train.astype(np.int32),
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=y_test.astype(np.int32),
        num_classes=num_classes,
    )
