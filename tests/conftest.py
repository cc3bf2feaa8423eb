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


# Files whose tests take the longest (tens of seconds to minutes: subprocess trainings,
# kill/resume, multi-worker jobs), from `pytest --durations`. They are collected first so
# that pytest-xdist hands them out at the start and the short tests fill in around them:
# started last, one of them alone can keep a worker busy for two minutes after the other
# has finished (longest-processing-time-first scheduling). The order inside a file is
# kept, so module-scoped fixtures are still built once per worker.
SLOW_FIRST = (
  "tests/scale/test_multi_worker.py",
  "tests/layers/test_jax_backend.py",
  "tests/scale/test_multistep.py",
  "tests/test_benchmark_accelerator.py",
  "tests/test_readme_example.py",
  "tests/reliability/test_fault_injection.py",
  "tests/e2e/test_resume.py",
  "tests/reliability/test_preemption.py",
  "tests/test_benchmark_methods.py",
  "tests/e2e/test_model_recipes_e2e.py",
  "tests/e2e/test_cli.py",
  "tests/test_packaging.py",
)


def pytest_collection_modifyitems(config, items):
  def rank(item):
    path = item.nodeid.split("::", 1)[0]
    return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

  items.sort(key=rank)  # Stable: every other test keeps its place.
