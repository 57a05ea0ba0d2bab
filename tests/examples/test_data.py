"""Tests of the example data loaders (CIFAR-10 on generated pickle files, digits) and batching."""

import pickle

import numpy as np
import pytest
from nmexamples import data


def _write_batch(path, images_chw, labels):
    """Writes a CIFAR-10 style batch: uint8 (N, 3072) rows of R, G, B planes."""
    with open(path, "wb") as f:
        pickle.dump(
            {b"data": images_chw.reshape(len(labels), -1), b"labels": list(labels)}, f, protocol=2
        )


def _cifar_dir(tmp_path, per_batch=3, n_test=2):
    rng = np.random.default_rng(0)
    all_images, all_labels = [], []
    for name in [*data.CIFAR10_TRAIN_FILES, data.CIFAR10_TEST_FILE]:
        n = n_test if name == data.CIFAR10_TEST_FILE else per_batch
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        _write_batch(tmp_path / name, images, labels)
        all_images.append(images)
        all_labels.append(labels)
    return all_images, all_labels


def test_cifar10_batch_layout(tmp_path):
    images = np.zeros((2, 3, 32, 32), np.uint8)
    images[0, 0] = np.arange(32 * 32).reshape(32, 32) % 256  # red plane, row-major
    images[0, 1] = 7
    images[0, 2] = 9
    images[1] = 200
    _write_batch(tmp_path / "b", images, [3, 5])
    x, y = data.read_cifar10_batch(tmp_path / "b")
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(y, [3, 5])
    np.testing.assert_array_equal(x[0, :, :, 0], np.arange(32 * 32).reshape(32, 32) % 256)
    assert np.all(x[0, :, :, 1] == 7) and np.all(x[0, :, :, 2] == 9) and np.all(x[1] == 200)


def test_load_cifar10_from_generated_files(tmp_path):
    images, labels = _cifar_dir(tmp_path)
    ds = data.load_cifar10(tmp_path)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, np.concatenate(labels[:5]))
    np.testing.assert_array_equal(ds.y_test, labels[5])
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    # standardisation is per channel and monotone: the order of pixel values is kept
    raw = np.concatenate(images[:5]).transpose(0, 2, 3, 1).astype(np.float32)
    for c in range(3):
        np.testing.assert_allclose(
            np.corrcoef(raw[..., c].ravel(), ds.x_train[..., c].ravel())[0, 1], 1.0, atol=1e-6
        )
    assert data.load("cifar10", tmp_path).x_train.shape == (15, 32, 32, 3)


def test_load_cifar10_errors(tmp_path):
    _cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="expected"):
        data.load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({"nothing": 1}, f)
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        data.load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="data_dir"):
        data.load("cifar10", None)
    with pytest.raises(ValueError, match="imagenet"):
        data.load("imagenet")


def test_load_digits_split():
    ds = data.load_digits()
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert set(np.unique(ds.y_test)) == set(range(10))  # stratified
    assert abs(len(ds.x_test) - 0.2 * 1797) < 10
    again = data.load_digits()
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    assert abs(float(ds.x_train.mean())) < 1e-4


def test_batches_and_augment():
    x = np.arange(10 * 4 * 4).reshape(10, 4, 4, 1).astype(np.float32)
    y = np.arange(10)
    got = list(data.batches(x, y, 4, seed=3, drop_last=True))
    assert [len(b[1]) for b in got] == [4, 4] == [4] * data.num_batches(10, 4, drop_last=True)
    again = list(data.batches(x, y, 4, seed=3, drop_last=True))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(got, again, strict=True))
    ordered = list(data.batches(x, y, 4, seed=None, drop_last=False))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in ordered]), y)
    with pytest.raises(ValueError, match="batch_size"):
        list(data.batches(x, y, 0, seed=None, drop_last=False))

    rng = np.random.default_rng(0)
    shifted = data.augment(x, rng, shift=1, flip=False)
    assert shifted.shape == x.shape
    for i in range(len(x)):  # each image is a translation by at most one pixel (edge padded)
        padded = np.pad(x[i], ((1, 1), (1, 1), (0, 0)), mode="edge")
        crops = [padded[dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(np.array_equal(shifted[i], c) for c in crops)
    flipped = data.augment(x, np.random.default_rng(1), shift=0, flip=True)
    for i in range(len(x)):
        assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])
