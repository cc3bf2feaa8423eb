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
    WarmupDecay(1.0, 10, decay="exponential")
  with pytest.raises(ValueError, match="needs make_optimizer.decay_boundaries"):
    WarmupDecay(1.0, 10, decay="step")
  with pytest.raises(ValueError, match="increasing positive"):
    WarmupDecay(1.0, 10, decay="step", decay_boundaries=(6, 3))
  with pytest.raises(ValueError, match="decay_boundaries=\\(s,\\)"):
    WarmupDecay(1.0, 10, decay="swa")
  with pytest.raises(ValueError, match="swa_lr / learning_rate"):
    WarmupDecay(1.0, 10, decay="swa", decay_boundaries=(6,), end_fraction=0.0)
  with pytest.raises(ValueError, match="only used by decay='step' or 'swa'"):
    WarmupDecay(1.0, 10, decay="cosine", decay_boundaries=(3,))
  with pytest.raises(ValueError, match="warmup_start_lr"):
    make_optimizer(100, warmup_start_lr=-1.0)


def _ub_warmup_piecewise_constant(
  step, steps_per_epoch, base_lr, decay_ratio, decay_epochs, warmup_epochs
):
  """NumPy transcription of uncertainty-baselines' `schedules.WarmUpPiecewiseConstantSchedule`
  (google/uncertainty-baselines uncertainty_baselines/schedules.py, used by every
  baselines/imagenet script; the same as baselines/cifar/utils.LearningRateSchedule)."""
  lr_epoch = np.float32(step) / np.float32(steps_per_epoch)
  lr = base_lr
  if warmup_epochs >= 1:
    lr = lr * lr_epoch / warmup_epochs
  for index, start_epoch in enumerate([warmup_epochs, *decay_epochs]):
    lr = np.where(lr_epoch >= start_epoch, base_lr * decay_ratio**index, lr)
  return float(lr)


@pytest.mark.parametrize("train_epochs,steps_per_epoch", [(90, 312), (200, 312), (135, 1251)])
def test_step_decay_matches_uncertainty_baselines(train_epochs, steps_per_epoch):
  base = 0.1 * 4096 / 256
  decay_epochs = [(train_epochs * e) // 90 for e in (30, 60, 80)]
  ours = WarmupDecay(
    base,
    total_steps=train_epochs * steps_per_epoch,
    warmup_steps=5 * steps_per_epoch,
    decay="step",
    decay_boundaries=[e * steps_per_epoch for e in decay_epochs],
    decay_ratio=0.1,
  )
  steps = [0, 1, 777, train_epochs * steps_per_epoch]
  for edge in [5, *decay_epochs]:
    steps += [edge * steps_per_epoch + d for d in (-1, 0, 1)]
  for step in steps:
    want = _ub_warmup_piecewise_constant(step, steps_per_epoch, base, 0.1, decay_epochs, 5)
    assert float(ours(step)) == pytest.approx(want, rel=1e-6, abs=1e-9), step
  # The boundaries really decay (guards against a transcription that is constant too).
  b = decay_epochs[0] * steps_per_epoch
  assert float(ours(b - 1)) == pytest.approx(base) and float(ours(b)) == pytest.approx(base / 10)


def test_warmup_start_lr_by_hand():
  # timm: lr = warmup_lr + t * (base - warmup_lr) / warmup_t during the warmup.
  s = WarmupDecay(1.0, total_steps=20, warmup_steps=10, decay="constant", warmup_start_lr=0.1)
  np.testing.assert_allclose(
    [float(s(t)) for t in (0, 5, 9, 10, 15)], [0.1, 0.55, 0.91, 1.0, 1.0], atol=1e-6
  )
  opt = make_optimizer(20, warmup_steps=10, warmup_start_lr=0.1, learning_rate=1.0)
  assert float(opt._learning_rate(0)) == pytest.approx(0.1)


def test_step_schedule_config_roundtrip():
  s = WarmupDecay(
    0.4,
    100,
    5,
    "step",
    decay_boundaries=(30, 60),
    decay_ratio=0.2,
    warmup_start_lr=0.01,
    accumulation_steps=2,
  )
  again = WarmupDecay.from_config(s.get_config())
  assert again.get_config() == s.get_config()
  assert float(again(2 * 61)) == pytest.approx(0.4 * 0.04)


def _swa_gaussian_schedule(epoch, lr_init, swa_lr, swa_start):
  """NumPy transcription of swa_gaussian's `schedule` (wjmaddox/swa_gaussian
  experiments/train/run_swag.py, with --swa): `t = epoch / swa_start`."""
  t = epoch / swa_start
  lr_ratio = swa_lr / lr_init
  if t <= 0.5:
    factor = 1.0
  elif t <= 0.9:
    factor = 1.0 - (1.0 - lr_ratio) * (t - 0.5) / 0.4
  else:
    factor = lr_ratio
  return lr_init * factor


@pytest.mark.parametrize("lr_init,swa_lr,swa_start", [(0.1, 0.05, 161), (0.05, 0.01, 161)])
def test_swa_decay_matches_swa_gaussian(lr_init, swa_lr, swa_start):
  # Their epochs are our updates here (the schedule is per update: smoother, same shape).
  s = WarmupDecay(
    lr_init, 300, decay="swa", decay_boundaries=(swa_start,), end_fraction=swa_lr / lr_init
  )
  steps = [0, 40, 80, 81, 100, 120, 144, 145, 161, 200, 299, 400]
  got = [float(s(t)) for t in steps]
  want = [_swa_gaussian_schedule(t, lr_init, swa_lr, swa_start) for t in steps]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert float(WarmupDecay.from_config(s.get_config())(145)) == pytest.approx(want[7])
