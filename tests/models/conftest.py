"""Fixtures shared by the models tests."""

from __future__ import annotations

import pytest

from fourbit.models.data import Dataset, load_dataset


@pytest.fixture(scope="module")
def digit_images():
    """scikit-learn digits as 1 x 8 x 8 images (real data, small enough for conv nets in tests)."""
    ds = load_dataset("digits")
    return Dataset("digits-images", ds.x_train.reshape(-1, 1, 8, 8), ds.y_train,
                   ds.x_test.reshape(-1, 1, 8, 8), ds.y_test, 10)
