"""The Python front door: `keras_unc.train` / `keras_unc.load` / `keras_unc.configure`, with
and without gin, and methods built from keyword arguments."""

import functools

import gin
import numpy as np
import pytest

import keras_unc
from keras_unc import config
from keras_unc.backbones import vit
from keras_unc.evaluators import ClassificationEvaluator
from keras_unc.methods import SNGP, Deterministic, heads, modifiers

TINY_VIT = functools.partial(
  vit, variant="Ti/4", width=16, depth=1, mlp_dim=32, num_heads=2, pooling="gap", posemb="sincos2d"
)


def _digits(n=16):
  from sklearn.datasets import load_digits

  d = load_digits()
  return (d.images[:n, ..., None] * 16).astype("uint8"), d.target[:n]


def test_train_and_load_without_gin(tmp_path):
  gin.clear_config()
  result = keras_unc.train(
    str(tmp_path),
    dataset="digits",
    total_steps=6,
    batch_size=32,
    method=Deterministic(head_init="glorot_uniform"),
    network=dict(backbone=TINY_VIT, image_size=8, num_channels=1),
    optimizer=dict(learning_rate=3e-3),
    evaluators=[ClassificationEvaluator(dataset="digits", split="test")],
    verbose=0,
  )
  assert result["step"] == 6 and 0.0 <= result["metrics"]["test/accuracy"] <= 1.0
  images, _ = _digits()
  served = keras_unc.load(result["export"])(images)
  in_process = result["network"](images.astype("float32"), training=False)
  assert set(served) >= {"logits", "probs", "uncertainty", "embedding"}
  np.testing.assert_allclose(served["probs"], in_process["probs"], atol=1e-5)


def test_keyword_arguments_win_over_gin(tmp_path):
  keras_unc.configure(
    ["testing/tiny.gin"],
    ["train.total_steps = 4", "train.eval_every = 4", "gp_head.num_inducing = 8"],
  )
  method = SNGP(gp_head=heads.GaussianProcess(num_inducing=24))
  result = keras_unc.train(str(tmp_path), method=method, evaluators=[])
  gp = result["network"].get_layer("gp")
  assert gp.num_inducing == 24  # The Python argument, not gin's 8.
  assert result["step"] == 4 and result["metrics"] == {}


def test_gin_binds_the_method_parts_python_builds():
  # The old gin names (`gp_head`, `spectral_norm`, `het_head`, `ensemble`) bind the classes.
  config.parse(
    [],
    [
      "gp_head.num_inducing = 32",
      "spectral_norm.norm_bound = 0.95",
      "het_head.num_factors = 2",
      "ensemble.ensemble_size = 3",
    ],
  )
  sngp = SNGP()
  assert sngp.head.gp_args["num_inducing"] == 32
  assert sngp.modifiers[0].norm_bound == 0.95
  assert (
    keras_unc.methods.HetXL().head.xl and keras_unc.methods.HetXL().head.args["num_factors"] == 2
  )
  assert keras_unc.methods.Plex().members == 3
  # Python objects bypass gin entirely.
  assert SNGP(spectral_norm=modifiers.SpectralNorm(norm_bound=2.0)).modifiers[0].norm_bound == 2.0
  assert SNGP(spectral_normalize=False).modifiers == ()


def test_configure_explains_a_typo():
  with pytest.raises(config.ConfigError, match="Did you mean: total_steps"):
    keras_unc.configure([], ["train.totl_steps = 3"])
