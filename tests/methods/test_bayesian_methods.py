"""Rank-1 BNN and variational inference as methods: train/test passes, the KL reaching the
training loss, the sampled noise resuming exactly, and the errors that name the fix."""

import functools

import keras
import numpy as np
import pytest

from keras_unc import methods
from keras_unc.backbones import vit
from keras_unc.layers.bayesian import DenseFlipout, DenseRank1
from keras_unc.training.network import build_network
from keras_unc.training.train_model import TrainModel
from tests.e2e.helpers import run_inprocess, run_stopped

TINY_VIT = functools.partial(
  vit, "Ti/4", width=16, depth=1, mlp_dim=32, num_heads=2, pooling="gap", posemb="sincos2d"
)


def _images(n=4):
  return np.random.default_rng(0).uniform(0, 255, (n, 8, 8, 1)).astype("float32")


def _net(method):
  return build_network(method, 10, (8, 8, 1), backbone=TINY_VIT, image_size=8, num_channels=1)


def _bayesian(net, cls):
  found = []
  for layer in net._flatten_layers(include_self=False, recursive=True):
    if isinstance(layer, cls):
      found.append(layer)
  return found


@pytest.mark.parametrize(
  "method, cls, train_m, test_m",
  [
    (lambda: methods.Rank1(ensemble_size=2, num_eval_samples=3, dataset_size=40), DenseRank1, 2, 6),
    (lambda: methods.Variational(num_eval_samples=3, dataset_size=40), DenseFlipout, 1, 3),
  ],
  ids=["rank1", "variational"],
)
def test_train_and_test_passes_and_the_kl_over_n_in_the_losses(method, cls, train_m, test_m):
  net = _net(method())
  bayesian = _bayesian(net, cls)
  assert len(bayesian) == 6 + 1  # 6 Dense in the ViT block + the head, all Bayesian.
  assert all(layer.kl_weight == 1 / 40 for layer in bayesian)
  x = _images()
  train = net(x, training=True)
  assert train["logits"].shape == (4, train_m, 10)
  kl = sum(float(layer.kl_divergence()) for layer in bayesian) / 40
  assert len(net.losses) >= len(bayesian)  # + the patch-embedding conv.
  assert float(sum(net.losses)) > kl > 0
  test = net(x, training=False)
  assert test["logits"].shape == (4, test_m, 10)
  # Samples differ: the members/samples of one image disagree, and so do two calls.
  logits = np.asarray(test["logits"])
  assert np.abs(logits[:, 0] - logits[:, -1]).max() > 1e-5
  assert not np.allclose(np.asarray(net(x, training=False)["logits"]), logits)


@pytest.mark.parametrize("cls", [methods.Rank1, methods.Variational])
@pytest.mark.parametrize("size, match", [(None, "dataset_size is not set"), (0, ">= 1")])
def test_dataset_size_is_required(cls, size, match):
  with pytest.raises(ValueError, match=match):
    cls(dataset_size=size)


def test_bad_method_arguments_raise():
  with pytest.raises(ValueError, match="Rank1.ensemble_size"):
    methods.Rank1(ensemble_size=0, dataset_size=10)
  with pytest.raises(ValueError, match="Variational.num_eval_samples"):
    methods.Variational(num_eval_samples=2.5, dataset_size=10)
  with pytest.raises(ValueError, match="prior_stddev"):
    methods.Rank1(prior_stddev=0.0, dataset_size=10)


RESUME = [
  "train.method = @Rank1()",
  "Rank1.ensemble_size = 2",
  "Rank1.dataset_size = 64",
  "train.total_steps = 4",
  "train.checkpoint_every = 2",
  "train.eval_every = 4",
  "train.evaluators = []",
  "train.export_at_end = False",
]


def _states(network):
  return [
    np.asarray(layer.seed_generator.state.numpy()) for layer in _bayesian(network, DenseRank1)
  ]


def test_rank1_noise_resumes_exactly(tmp_path):
  # The factor noise comes from per-layer SeedGenerators whose states are checkpointed:
  # stopping at step 2 and resuming ends where the uninterrupted run does.
  ref = run_inprocess(tmp_path / "ref", "train", RESUME)
  stopped = run_stopped(tmp_path / "res", RESUME)
  assert stopped["step"] == 2
  half = _states(stopped["network"])
  res = run_inprocess(tmp_path / "res", "train", RESUME)
  assert res["step"] == 4
  assert not np.array_equal(half[0], _states(res["network"])[0])  # It drew 2 more times.
  for a, b in zip(_states(ref["network"]), _states(res["network"])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(ref["network"].weights, res["network"].weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def _ub_kl_scale(iterations, steps_per_epoch, kl_annealing_epochs):
  """uncertainty-baselines baselines/cifar/rank1_bnn.py (and variational_inference.py):
  `kl_scale = min(1, (optimizer.iterations + 1) / (steps_per_epoch * kl_annealing_epochs))`."""
  return min(1.0, (iterations + 1) / (steps_per_epoch * kl_annealing_epochs))


@pytest.mark.parametrize("cls", [methods.Rank1, methods.Variational])
def test_kl_warm_up_matches_uncertainty_baselines(cls):
  # ub CIFAR: 250 epochs, KL annealed over 200 -> kl_annealing = 0.8 of the steps.
  steps_per_epoch, epochs = 10, 250
  method = cls(dataset_size=40, kl_annealing=200 / 250)
  model = TrainModel(_net(method), method, total_steps=steps_per_epoch * epochs)
  model.compile(optimizer=keras.optimizers.SGD(0.1))
  x, y = _images(), np.array([0, 1, 2, 3])
  for it in (0, 1, 999, 1998, 1999, 2000, 2499):
    model.optimizer.iterations.assign(it)
    got = float(model.layer_loss_scale())
    assert got == pytest.approx(_ub_kl_scale(it, steps_per_epoch, 200), rel=1e-6)
  # The scale multiplies the layers' losses (the KL / N) in the training loss, not the CE.
  model.optimizer.iterations.assign(99)  # Scale 100 / 2000 = 0.05.
  y_pred = model(x, training=True)
  kl = float(sum(model.losses))
  ce = float(np.mean(method.train_loss(x, y, y_pred)))
  total = float(model.compute_loss(x, y, y_pred))
  assert kl > 0
  assert total == pytest.approx(ce + 0.05 * kl, rel=1e-5)
  off = cls(dataset_size=40, kl_annealing=0.0)
  assert float(TrainModel(_net(off), off, total_steps=100).layer_loss_scale()) == 1.0


@pytest.mark.parametrize("value", [-0.1, 1.5, "half", True])
def test_kl_annealing_must_be_a_fraction(value):
  with pytest.raises(ValueError, match="kl_annealing=.*fraction of train.total_steps"):
    methods.Rank1(dataset_size=40, kl_annealing=value)
