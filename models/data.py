"""Real data sets, loaded from files already on disk (never downloaded at run time).

Each loader returns a `Dataset` of float32 inputs (batch first) and int64 labels with a fixed
train/test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from traces.errors import ConfigError, DataError

__all__ = ["DATASETS", "Dataset", "load_dataset"]


@dataclass(frozen=True)
class Dataset:
    """A classification data set with a fixed split: x_* float32 (N, *input_shape), y_* int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def digits(data_dir=None) -> Dataset:
    """scikit-learn's handwritten digits (UCI Optical Recognition of Handwritten Digits,
    1797 images of 8x8, pixel values 0..16, CC BY 4.0; shipped inside scikit-learn), scaled to
    [0, 1], with a fixed stratified 80/20 split (``train_test_split(..., random_state=0)``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10)


DATASETS = {"digits": digits}


def load_dataset(name: str, data_dir=None) -> Dataset:
    """Load data set ``name`` (files from ``data_dir`` where the set needs them).

    Raises ConfigError for an unknown name (the message lists the known ones), DataError when
    ``data_dir`` is given and is not a directory.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {str(data_dir)!r} is not a directory")
    return DATASETS[name](data_dir)
