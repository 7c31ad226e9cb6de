"""Real data sets, loaded from files already on disk (never downloaded at run time).

Each loader returns a `Dataset` with a fixed train/test split. Loaders that need files take a
directory (``--data-dir``; default: the ``FOURBIT_DATA_DIR`` environment variable), check it, and
fail with a `DataError` naming the missing or malformed file. Arrays are loaded without pickle.

============  ====================================================================================
name          source and preprocessing
============  ====================================================================================
``digits``    scikit-learn's 8x8 handwritten digits (UCI, CC BY 4.0; ships with scikit-learn),
              scaled to [0, 1], stratified 80/20 split (``random_state=0``)
``mnist``     MNIST idx files (``train-images-idx3-ubyte[.gz]`` and the three others; LeCun et al.
              1998; CC BY-SA 3.0), 1 x 28 x 28 scaled to [0, 1], the official 60k/10k split
``cifar10``   CIFAR-10 binary batches (``data_batch_1..5.bin``, ``test_batch.bin``; Krizhevsky
              2009), 3 x 32 x 32 scaled to [0, 1]
``fsdd``      Free Spoken Digit Dataset as ``fsdd.npz`` (audio int16 (N, 8000) at 8 kHz, labels,
              is_test; CC BY-SA 4.0): 40 log-mel bands of 25 ms windows every 16 ms (1 x 40 x 61),
              standardised with the training set's mean and deviation; the official split (takes
              0-4 are test)
``shakespeare``  a character corpus (``tinyshakespeare.txt``, Karpathy's char-rnn, public domain
              text): sequences of 64 characters predicting the next, 90/10 split by position
============  ====================================================================================
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fourbit.traces.errors import ConfigError, DataError

__all__ = ["DATASETS", "Dataset", "load_dataset", "log_mel"]


@dataclass(frozen=True)
class Dataset:
    """A data set with a fixed split: x_* float32 (N, *input_shape) or int64 token ids (N, T);
    y_* int64 labels (N,) or next tokens (N, T); ``n_classes`` classes or vocabulary size."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    vocab: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _dir(data_dir, name: str, needs: str) -> Path:
    d = data_dir if data_dir is not None else os.environ.get("FOURBIT_DATA_DIR")
    if d is None:
        raise DataError(f"dataset {name!r} needs --data-dir: a directory holding {needs}")
    path = Path(d)
    if not path.is_dir():
        where = "--data-dir" if data_dir is not None else "$FOURBIT_DATA_DIR"
        raise DataError(f"{where} {str(d)!r} is not a directory")
    return path


def _find(base: Path, names: list[str], sub: str) -> Path:
    for folder in (base, base / sub):
        for n in names:
            if (folder / n).is_file():
                return folder / n
    raise DataError(f"{base}: no {names[0]} (looked for {', '.join(names)} in {base} and {base / sub})")


def digits(data_dir=None) -> Dataset:
    """scikit-learn's handwritten digits (see the module table)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (LeCun's format: magic 0x0000 0x08 ndim, big-endian int32 sizes, ubyte data)."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a corrupted (not merely truncated) deflate stream
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path}: not an idx file of unsigned bytes with {ndim} dimensions (bad magic number)")
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4).astype(np.int64)
    start = 4 + 4 * ndim
    if len(raw) - start != int(np.prod(dims)):
        raise DataError(f"{path}: header says {' x '.join(map(str, dims))} = {int(np.prod(dims))} bytes, "
                        f"the file holds {len(raw) - start}")
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def mnist(data_dir=None) -> Dataset:
    """MNIST from its idx files (see the module table)."""
    base = _dir(data_dir, "mnist", "the MNIST idx files (train-images-idx3-ubyte.gz, ...)")
    parts = {}
    for key, stem, ndim in (("x_train", "train-images-idx3-ubyte", 3), ("y_train", "train-labels-idx1-ubyte", 1),
                            ("x_test", "t10k-images-idx3-ubyte", 3), ("y_test", "t10k-labels-idx1-ubyte", 1)):
        parts[key] = _read_idx(_find(base, [stem + ".gz", stem], "mnist"), ndim)
    for split in ("train", "test"):
        x, y = parts[f"x_{split}"], parts[f"y_{split}"]
        if len(x) != len(y) or x.shape[1:] != (28, 28) or y.max(initial=0) > 9:
            raise DataError(f"{base}: MNIST {split} images {x.shape} and labels {y.shape} do not match")
    return Dataset("mnist", (parts["x_train"][:, None] / 255.0).astype(np.float32), parts["y_train"].astype(np.int64),
                   (parts["x_test"][:, None] / 255.0).astype(np.float32), parts["y_test"].astype(np.int64), 10)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = path.read_bytes()
    if not raw or len(raw) % 3073:
        raise DataError(f"{path}: {len(raw)} bytes is not a whole number of 3,073-byte CIFAR-10 records")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
    if rec[:, 0].max() > 9:
        raise DataError(f"{path}: label {int(rec[:, 0].max())} is not a CIFAR-10 class (0..9)")
    return (rec[:, 1:].reshape(-1, 3, 32, 32) / 255.0).astype(np.float32), rec[:, 0].astype(np.int64)


def cifar10(data_dir=None) -> Dataset:
    """CIFAR-10 from its binary batches (see the module table)."""
    base = _dir(data_dir, "cifar10", "data_batch_1.bin .. data_batch_5.bin and test_batch.bin")
    train = [_cifar_batch(_find(base, [f"data_batch_{i}.bin"], "cifar-10-batches-bin")) for i in range(1, 6)]
    test = _cifar_batch(_find(base, ["test_batch.bin"], "cifar-10-batches-bin"))
    return Dataset("cifar10", np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                   test[0], test[1], 10)


def _mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters equally spaced on the HTK mel scale (2595 log10(1 + f/700)), (mels, bins)."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bins = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = hz(np.linspace(mel(0.0), mel(sr / 2), n_mels + 2))
    fb = np.zeros((n_mels, bins.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        fb[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0.0, None)
    return fb


def log_mel(audio: np.ndarray, sr: int = 8000, n_fft: int = 256, win: int = 200, hop: int = 128,
            n_mels: int = 40) -> np.ndarray:
    """log(mel power + 1e-6) of (N, samples) audio: Hann windows of ``win`` samples every
    ``hop``, zero-padded to ``n_fft``; returns float32 (N, n_mels, frames)."""
    x = np.asarray(audio, np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, win, axis=1)[:, ::hop]
    spec = np.abs(np.fft.rfft(frames * np.hanning(win), n=n_fft, axis=-1)) ** 2
    mel = spec @ _mel_filters(sr, n_fft, n_mels).T
    return np.log(mel + 1e-6).transpose(0, 2, 1).astype(np.float32)


def fsdd(data_dir=None) -> Dataset:
    """Spoken digits from ``fsdd.npz`` as log-mel spectrograms (see the module table)."""
    base = _dir(data_dir, "fsdd", "fsdd.npz (the Free Spoken Digit Dataset's waveforms)")
    path = _find(base, ["fsdd.npz"], "fsdd")
    try:
        with np.load(path, allow_pickle=False) as z:
            audio, labels, is_test = z["audio"], z["labels"], z["is_test"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a spoken-digit archive with audio, labels and is_test ({exc})") from exc
    if audio.ndim != 2 or len(audio) != len(labels) or len(labels) != len(is_test):
        raise DataError(f"{path}: audio {audio.shape}, labels {labels.shape} and is_test {is_test.shape} do not match")
    feats = log_mel(audio.astype(np.float32) / 32768.0)
    test = is_test.astype(bool)
    mean = feats[~test].mean(axis=(0, 2), keepdims=True, dtype=np.float64)
    std = feats[~test].std(axis=(0, 2), keepdims=True, dtype=np.float64) + 1e-6
    feats = ((feats - mean) / std)[:, None].astype(np.float32)
    y = labels.astype(np.int64)
    return Dataset("fsdd", feats[~test], y[~test], feats[test], y[test], 10)


def shakespeare(data_dir=None, seq_len: int = 64) -> Dataset:
    """A character corpus as next-character prediction (see the module table)."""
    base = _dir(data_dir, "shakespeare", "tinyshakespeare.txt (a UTF-8 text)")
    path = _find(base, ["tinyshakespeare.txt", "input.txt"], "shakespeare")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a UTF-8 text ({exc})") from exc
    if len(text) < 20 * (seq_len + 1):
        raise DataError(f"{path}: {len(text)} characters is too short for sequences of {seq_len}: at least "
                        f"{20 * (seq_len + 1)} (20 windows of {seq_len + 1})")
    vocab = "".join(sorted(set(text)))
    ids = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    lut[[ord(ch) for ch in vocab]] = np.arange(len(vocab))
    ids = lut[ids]
    cut = int(len(ids) * 0.9)

    def windows(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = (len(seq) - 1) // seq_len
        x = seq[:n * seq_len].reshape(n, seq_len)
        y = seq[1:n * seq_len + 1].reshape(n, seq_len)
        return x, y

    x_tr, y_tr = windows(ids[:cut])
    x_te, y_te = windows(ids[cut:])
    return Dataset("shakespeare", x_tr, y_tr, x_te, y_te, len(vocab), vocab)


DATASETS = {"digits": digits, "mnist": mnist, "cifar10": cifar10, "fsdd": fsdd, "shakespeare": shakespeare}


def load_dataset(name: str, data_dir=None) -> Dataset:
    """Load data set ``name`` (files from ``data_dir`` where the set needs them).

    Raises ConfigError for an unknown name (the message lists the known ones), DataError for a
    missing directory or a missing or malformed file.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {str(data_dir)!r} is not a directory")
    return DATASETS[name](data_dir)
