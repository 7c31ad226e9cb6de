"""Shared fixtures: small real runs, reused across tests (session scope keeps CI fast)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# "ci" (the default): the same examples on every run, so a test run is reproducible and CI is
# never red by chance; "explore" (HYPOTHESIS_PROFILE=explore): fresh random examples, more of them.
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, max_examples=500,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def digits_traces():
    """The committed traces of the MLP on digits, 2 epochs of ``fp32`` and of ``int4`` (seed 0;
    ``tests/data``, made by ``tests/data/make_traces.py``): tests that only read a trace need no
    training."""
    from pathlib import Path

    from fourbit.traces.io import read

    data = Path(__file__).resolve().parent / "data"
    return {r: read(data / f"mlp-digits-{r}") for r in ("fp32", "int4")}


def _shared_data_dir():
    from pathlib import Path

    env = os.environ.get("FOURBIT_DATA_DIR")
    for d in ([Path(env)] if env else []) + [Path(__file__).resolve().parents[2] / "shared" / "data"]:
        if (d / "mnist").is_dir() and (d / "fsdd.npz").is_file():
            return d
    return None


@pytest.fixture(scope="session")
def data_dir():
    """The real data sets (MNIST, spoken digits, tiny-shakespeare): $FOURBIT_DATA_DIR or the
    ``shared/data`` directory next to the repository."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip("real data sets not found: set FOURBIT_DATA_DIR to a directory with mnist/, fsdd.npz "
                    "and tinyshakespeare.txt")
    return d
