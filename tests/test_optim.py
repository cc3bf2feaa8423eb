"""Learning-rate schedules against NumPy by hand; optimizer choices and errors."""

import math

import keras
import numpy as np
import pytest

from keras_unc.training.optim import WarmupDecay, make_optimizer


def test_warmup_cosine_by_hand():
  s = WarmupDecay(1.0, total_steps=110, warmup_steps=10, decay="cosine")
  for step in (0, 5, 10, 60, 110, 200):
    if step < 10:
      want = step / 10
    else:
      want = 0.5 * (1 + math.cos(math.pi * min((step - 10) / 100, 1.0)))
    assert float(s(step)) == pytest.approx(want, abs=1e-6)


def test_linear_and_constant_and_end_fraction():
  lin = WarmupDecay(2.0, total_steps=100, decay="linear", end_fraction=0.1)
  np.testing.assert_allclose([float(lin(t)) for t in (0, 50, 100)], [2.0, 1.1, 0.2], atol=1e-6)
  const = WarmupDecay(0.5, total_steps=100, decay="constant")
  assert float(const(77)) == pytest.approx(0.5)


def test_schedule_config_roundtrip():
  s = WarmupDecay(1e-3, 1000, 100, "linear", 0.0)
  assert WarmupDecay.from_config(s.get_config()).get_config() == s.get_config()


@pytest.mark.parametrize(
  "name,cls",
  [
    ("adamw", keras.optimizers.AdamW),
    ("sgd", keras.optimizers.SGD),
    ("lamb", keras.optimizers.Lamb),
    ("adam", keras.optimizers.Adam),
  ],
)
def test_make_optimizer(name, cls):
  assert isinstance(make_optimizer(100, name=name), cls)


def test_bad_optimizer_inputs_are_clear():
  with pytest.raises(ValueError, match="adamw, adam, sgd, lamb"):
    make_optimizer(100, name="rmsprop")
  with pytest.raises(ValueError, match="finite"):
    make_optimizer(100, learning_rate=float("nan"))
  with pytest.raises(ValueError, match="cosine"):
    WarmupDecay(1.0, 10, decay="step")
