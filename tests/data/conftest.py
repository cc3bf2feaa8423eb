"""Shared fixtures for the data tests: real MNIST / Fashion-MNIST from the data folder."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from keras_unc.data import default_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
  """The fetched data folder; skips (with the fix) when it was not fetched."""
  d = default_data_dir()
  if not os.path.exists(os.path.join(d, "mnist", "mnist.pkl.gz")):
    pytest.skip(f"no MNIST in {d}: run launch/fetch_data.sh")
  return d
