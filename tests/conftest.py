"""Test session set-up: two logical CPU devices (MirroredStrategy tests), data dir, gin reset."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_UNC_DATA_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(__file__)), "data"))

import gin  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from keras_unc import distribute  # pylint: disable=g-import-not-at-top

distribute.configure_cpu_devices(2)  # Before any TF op initialises the devices.


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()
