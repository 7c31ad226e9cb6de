"""Data loaders: real files (shapes, splits, values) and every malformed-input error."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from fourbit.models.data import load_dataset, log_mel
from fourbit.traces.errors import ConfigError, DataError


def test_digits_is_built_in():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_test).min() >= 35  # stratified


def test_mnist_official_split(data_dir):
    ds = load_dataset("mnist", data_dir / "mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_test).tolist()[:3] == [980, 1135, 1032]  # LeCun's test set
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0


def test_mnist_found_in_a_subdirectory(data_dir):
    assert load_dataset("mnist", data_dir).n_classes == 10


def _copy_mnist(data_dir, tmp_path):
    for f in (data_dir / "mnist").iterdir():
        if f.name.endswith(".gz"):
            shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_mnist_corrupt_idx_files_are_named(data_dir, tmp_path):
    d = _copy_mnist(data_dir, tmp_path)
    raw = gzip.open(d / "t10k-labels-idx1-ubyte.gz").read()
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-5]))  # truncated
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: header says 10000 = 10000 bytes, the file holds 9995"):
        load_dataset("mnist", d)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + raw[4:]))
    with pytest.raises(DataError, match="bad magic number"):
        load_dataset("mnist", d)
    good = gzip.compress(raw)  # corrupted inside the deflate stream, past the gzip header
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(good[:20] + bytes(b ^ 0xFF for b in good[20:60]) + good[60:])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: unreadable \((error|BadGzipFile)"):
        load_dataset("mnist", d)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: unreadable"):
        load_dataset("mnist", d)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", d)


def test_mnist_labels_that_do_not_match_the_images(data_dir, tmp_path):
    d = _copy_mnist(data_dir, tmp_path)
    raw = gzip.open(d / "t10k-labels-idx1-ubyte.gz").read()
    short = raw[:4] + np.array([9999], ">i4").tobytes() + raw[8:-1]
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(short))
    with pytest.raises(DataError, match="MNIST test images .* and labels .* do not match"):
        load_dataset("mnist", d)


def test_missing_directory_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.delenv("FOURBIT_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="is not a directory"):
        load_dataset("mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="dataset 'fsdd' needs --data-dir"):
        load_dataset("fsdd")
    with pytest.raises(DataError, match="no fsdd.npz"):
        load_dataset("fsdd", tmp_path)
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'; known datasets: digits, mnist"):
        load_dataset("imagenet")


def _cifar_records(labels, rng):
    rec = np.zeros((len(labels), 3073), np.uint8)
    rec[:, 0] = labels
    rec[:, 1:] = rng.integers(0, 256, (len(labels), 3072))
    return rec


def test_cifar10_binary_batches(tmp_path):
    rng = np.random.default_rng(0)
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    batches = [_cifar_records([i, (i + 1) % 10], rng) for i in range(5)]
    for i, rec in enumerate(batches, 1):
        (sub / f"data_batch_{i}.bin").write_bytes(rec.tobytes())
    test = _cifar_records([7, 3, 9], rng)
    (sub / "test_batch.bin").write_bytes(test.tobytes())
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_train.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5] and ds.y_test.tolist() == [7, 3, 9]
    # channel-major planes: the first 1024 bytes after the label are the red plane, row by row
    assert ds.x_test[0, 0, 0, 1] == np.float32(test[0, 2] / 255.0)
    assert ds.x_test[0, 1, 0, 0] == np.float32(test[0, 1 + 1024] / 255.0)
    (sub / "test_batch.bin").write_bytes(test.tobytes()[:-1])
    with pytest.raises(DataError, match="test_batch.bin: 9218 bytes is not a whole number of 3,073-byte"):
        load_dataset("cifar10", tmp_path)
    test[1, 0] = 12
    (sub / "test_batch.bin").write_bytes(test.tobytes())
    with pytest.raises(DataError, match="label 12 is not a CIFAR-10 class"):
        load_dataset("cifar10", tmp_path)
    (sub / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="no data_batch_3.bin"):
        load_dataset("cifar10", tmp_path)


def test_fsdd_official_split_and_features(data_dir):
    ds = load_dataset("fsdd", data_dir)
    assert ds.x_train.shape == (2700, 1, 40, 61) and ds.x_test.shape == (300, 1, 40, 61)
    assert np.bincount(ds.y_test).tolist() == [30] * 10  # takes 0-4 of 6 speakers x 10 digits
    mean = ds.x_train.mean(axis=(0, 3), dtype=np.float64)
    np.testing.assert_allclose(mean, 0, atol=1e-5)  # standardised per band on the training set


def test_fsdd_malformed_archive(tmp_path):
    np.savez(tmp_path / "fsdd.npz", audio=np.zeros((3, 800), np.int16), labels=np.zeros(2))
    with pytest.raises(DataError, match="not a spoken-digit archive"):
        load_dataset("fsdd", tmp_path)
    np.savez(tmp_path / "fsdd.npz", audio=np.zeros((3, 800), np.int16), labels=np.zeros(2), is_test=np.zeros(3))
    with pytest.raises(DataError, match=r"audio \(3, 800\), labels \(2,\) and is_test \(3,\) do not match"):
        load_dataset("fsdd", tmp_path)


def test_log_mel_puts_a_tone_in_its_band():
    sr = 8000
    t = np.arange(sr) / sr
    feats = log_mel(np.sin(2 * np.pi * 1000 * t)[None])
    assert feats.shape == (1, 40, 61)
    band = int(np.argmax(feats[0].mean(axis=1)))
    mel = 2595 * np.log10(1 + 1000 / 700)
    edges = np.linspace(0, 2595 * np.log10(1 + 4000 / 700), 42)
    assert edges[band] < mel < edges[band + 2]  # the triangle whose support holds 1 kHz


def test_shakespeare_next_character_windows(data_dir, tmp_path):
    ds = load_dataset("shakespeare", data_dir)
    assert ds.n_classes == 65 and len(ds.vocab) == 65
    assert ds.x_train.shape[1] == 64 and ds.x_train.shape == ds.y_train.shape
    np.testing.assert_array_equal(ds.x_train[:, 1:], ds.y_train[:, :-1])  # y is x shifted by one
    text = "".join(ds.vocab[i] for i in ds.x_train[0])
    assert text.startswith("First Citizen:")
    (tmp_path / "tinyshakespeare.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataError, match="not a UTF-8 text"):
        load_dataset("shakespeare", tmp_path)
    (tmp_path / "tinyshakespeare.txt").write_text("too short")
    with pytest.raises(DataError, match="9 characters is too short"):
        load_dataset("shakespeare", tmp_path)
