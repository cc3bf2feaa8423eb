"""Shared fixtures for the data tests: real MNIST / Fashion-MNIST from ./data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def data_dir():
    """The fetched data folder; skips (with the fix) when it was not fetched."""
    d = os.environ.get("KERAS_UNC_DATA_DIR") or os.path.join(REPO, "data")
    if not os.path.exists(os.path.join(d, "mnist", "mnist.pkl.gz")):
        pytest.skip(f"no MNIST in {d}: run launch/fetch_data.sh")
    return d
