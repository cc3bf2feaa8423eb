"""Gin parsing errors with close matches, strategy selection and precision policies."""

import json

import gin
import keras
import pytest
import tensorflow as tf

from keras_unc import config
from keras_unc.runtime import distribute


def test_unknown_configurable_suggests_close_match():
  with pytest.raises(config.ConfigError, match="Did you mean: .*train"):
    config.parse([], ["trian.batch_size = 3"])


def test_unknown_parameter_lists_valid_ones():
  with pytest.raises(config.ConfigError, match="Did you mean: batch_size") as e:
    config.parse([], ["train.batchsize = 3"])
  assert "total_steps" in str(e.value)


def test_unknown_reference_suggests_close_match():
  with pytest.raises(config.ConfigError, match="resnet"):
    config.parse([], ["build_network.backbone = @resnt"])


def test_missing_gin_file():
  with pytest.raises(config.ConfigError, match="not found"):
    config.parse(["nope/missing.gin"])


def test_includes_resolve_from_gin_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Any working directory, even one with a data/ folder.
  (tmp_path / "data").mkdir()
  config.parse(["demo/mnist.gin"], finalize=False)
  assert gin.query_parameter("train.dataset") == "mnist"


def test_operative_config_saved(tmp_path):
  config.parse([], ["make_optimizer.learning_rate = 0.5"])
  from keras_unc.training.optim import make_optimizer

  make_optimizer(10)
  text = config.save_operative_config(str(tmp_path))
  assert "make_optimizer.learning_rate = 0.5" in (tmp_path / "config.gin").read_text() == text


def test_strategies():
  assert distribute.get_strategy("one_device").num_replicas_in_sync == 1
  assert distribute.get_strategy("auto").num_replicas_in_sync == 1
  assert distribute.get_strategy("mirrored").num_replicas_in_sync == 2  # conftest: 2 CPUs.
  with pytest.raises(ValueError, match="auto, one_device, mirrored, multi_worker, tpu"):
    distribute.get_strategy("horovod")


def test_multi_worker_needs_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ValueError, match="TF_CONFIG"):
    distribute.get_strategy("multi_worker")
  monkeypatch.setenv("TF_CONFIG", "{not json")
  with pytest.raises(json.JSONDecodeError):
    distribute.get_strategy("multi_worker")


def test_precision_policies():
  try:
    distribute.set_precision("mixed_bfloat16")
    assert keras.config.dtype_policy().compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().variable_dtype == "float32"
    with pytest.raises(ValueError, match="mixed_float16"):
      distribute.set_precision("fp8")
  finally:
    distribute.set_precision("float32")
  assert tf.config.list_logical_devices("CPU")


@pytest.mark.parametrize("tpu", ["local", "my-tpu"])
def test_tpu_without_tpu_is_clear(tpu):
  with pytest.raises(RuntimeError, match="No TPU found .*--tpu=local"):
    distribute.get_strategy("tpu", tpu=tpu)


def test_a_users_gin_file_wins_over_the_shipped_one(tmp_path, monkeypatch):
  # Same relative name as a shipped file: the user's own (in the working directory) is read.
  (tmp_path / "demo").mkdir()
  (tmp_path / "demo" / "mnist.gin").write_text("train.total_steps = 7\n")
  monkeypatch.chdir(tmp_path)
  config.parse(["demo/mnist.gin"], [], finalize=False)
  assert gin.query_parameter("train.total_steps") == 7
  gin.clear_config()
  # A name that exists only in the package comes from the shipped gin_configs/.
  config.parse(["testing/tiny.gin"], [], finalize=False)
  assert gin.query_parameter("train.dataset") == "digits"
  with pytest.raises(config.ConfigError, match="not found"):
    config.parse(["nope/missing.gin"])


def test_value_is_the_binding_else_the_python_default():
  config.parse(["methods/sngp.gin"], ["gp_head.num_inducing = 64"], finalize=False)
  assert config.value("gp_head.num_inducing") == 64  # Bound.
  assert config.value("gp_head.kernel_scale") == 20.0  # Python default of heads.GaussianProcess.
  assert config.value("spectral_norm.norm_bound") == 6.0
  with pytest.raises(ValueError, match="no parameter"):
    config.value("gp_head.nope")
  with pytest.raises(ValueError, match="required"):
    config.value("train.dataset")
