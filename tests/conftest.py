"""Test session set-up: two logical CPU devices (MirroredStrategy tests), configurables, gin reset.

Data comes from `keras_unc.data.default_data_dir()` ($KERAS_UNC_DATA_DIR, else
~/.cache/keras_unc/data), where `launch/setup.sh` fetched it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin
import pytest

from keras_unc.cli import registry
from keras_unc.runtime import distribute

distribute.configure_cpu_devices(2)  # Before any TF op initialises the devices.
registry.register_configurables()  # What the CLI and keras_unc.configure do before parsing.


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()
