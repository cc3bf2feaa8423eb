"""Every method composes with both backbones and honours the output convention."""

import functools

import gin
import keras
import numpy as np
import pytest

from keras_unc import methods
from keras_unc.backbones import resnet, vit
from keras_unc.layers.batch_ensemble import DenseBatchEnsemble, TileMembers
from keras_unc.layers.spectral_norm import SpectralNormalization
from keras_unc.training.network import build_network

TINY_VIT = functools.partial(
  vit, "Ti/4", width=16, depth=2, mlp_dim=32, num_heads=2, pooling="gap", posemb="sincos2d"
)
TINY_RESNET = functools.partial(resnet, 18, width=0.125, stem="cifar")
NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _small_heads(_clear_gin):
  # What a gin file binds for 10 classes, with small Monte Carlo and GP sizes.
  gin.parse_config(
    [
      "het_head.num_factors = 3",
      "het_head.train_mc_samples = 8",
      "het_head.test_mc_samples = 16",
      "gp_head.num_inducing = 64",
    ]
  )


def _small(name):
  """The registered method with small, fast settings."""
  m = {
    "deterministic": lambda: methods.Deterministic(),
    "batchensemble": lambda: methods.BatchEnsemble(ensemble_size=3),
    "sngp": lambda: methods.SNGP(),
    "heteroscedastic": lambda: methods.Heteroscedastic(),
    "hetxl": lambda: methods.HetXL(),
    "mc_dropout": lambda: methods.MCDropout(rate=0.2, num_samples=5),
    "shallow_ensemble": lambda: methods.ShallowEnsemble(num_heads=3),
    "plex": lambda: methods.Plex(),
    "hetsngp": lambda: methods.HetSNGP(),
    "be_sngp": lambda: methods.BESNGP(),
    "laplace": lambda: methods.Laplace(),
    "url": lambda: methods.URL(module="class_entropy", loss="cross_entropy", unc_start_value=0.0),
    "mimo": lambda: methods.MIMO(ensemble_size=2, batch_repetitions=2),
    "packed": lambda: methods.Packed(num_estimators=2),
    "rank1": lambda: methods.Rank1(ensemble_size=2, num_eval_samples=2, dataset_size=100),
    "variational": lambda: methods.Variational(num_eval_samples=3, dataset_size=100),
    "swag": lambda: methods.SWAG(max_num_models=2, num_samples=2),
  }
  return m[name]()


def _members(method):
  return {
    "batchensemble": 3,
    "mc_dropout": 5,
    "shallow_ensemble": 3,
    "plex": 4,
    "be_sngp": 4,
    "mimo": 2,
    "packed": 2,
    "rank1": 4,
    "variational": 3,
  }.get(method.name, 1)


def _network(method, backbone=TINY_VIT):
  return build_network(
    method, NUM_CLASSES, (8, 8, 1), backbone=backbone, image_size=8, num_channels=1
  )


def test_every_named_method_is_registered():
  assert set(methods.METHODS) == {
    "deterministic",
    "batchensemble",
    "sngp",
    "heteroscedastic",
    "hetxl",
    "mc_dropout",
    "shallow_ensemble",
    "plex",
    "hetsngp",
    "be_sngp",
    "url",
    "mimo",
    "packed",
    "laplace",
    "rank1",
    "variational",
    "swag",
  }


@pytest.mark.parametrize("name", sorted(methods.METHODS))
@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_RESNET], ids=["vit", "resnet"])
def test_output_convention(name, backbone):
  method = _small(name)
  if name == "packed" and backbone is TINY_VIT:  # LayerNorm/attention would mix members.
    with pytest.raises(ValueError, match="Packed-Ensembles cannot pack"):
      _network(method, backbone)
    return
  net = _network(method, backbone)
  x = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 1)).astype("float32")
  out = net(x, training=False)
  m = _members(method)
  assert tuple(out["logits"].shape) == (6, m, NUM_CLASSES)
  probs = np.asarray(out["probs"])
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  # probs is the member mean of softmax(logits): recompute by hand.
  logits = np.asarray(out["logits"], np.float64)
  by_hand = np.exp(logits - logits.max(-1, keepdims=True))
  by_hand = (by_hand / by_hand.sum(-1, keepdims=True)).mean(1)
  np.testing.assert_allclose(probs, by_hand, atol=1e-5)
  expected = 1 - probs.max(-1)
  if name == "url":  # Its class_entropy module: entropy of the predictive.
    expected = -(probs * np.log(np.maximum(probs, 1e-30))).sum(-1)
  np.testing.assert_allclose(np.asarray(out["uncertainty"]), expected, atol=1e-5)
  assert out["embedding"].shape[0] == 6 and len(out["embedding"].shape) == 2


def test_training_call_shapes_follow_train_members():
  # MC dropout trains on one sample and predicts with S.
  net = _network(methods.MCDropout(rate=0.5, num_samples=7))
  x = np.zeros((4, 8, 8, 1), "float32")
  assert net(x, training=True)["logits"].shape == (4, 1, NUM_CLASSES)
  assert net(x, training=False)["logits"].shape == (4, 7, NUM_CLASSES)


def test_batchensemble_tiles_once_and_members_differ():
  net = _network(methods.BatchEnsemble(ensemble_size=3))
  assert sum(isinstance(l, TileMembers) for l in _all_layers(net)) == 1
  be = [l for l in _all_layers(net) if isinstance(l, DenseBatchEnsemble)]
  assert len(be) == 2 * 6 + 1  # 6 Dense per ViT block, 2 blocks, + the head.
  x = np.random.default_rng(1).uniform(0, 255, (5, 8, 8, 1)).astype("float32")
  logits = np.asarray(net(x)["logits"])
  assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-4


def test_plex_puts_batchensemble_only_in_chosen_mlp_blocks():
  gin.parse_config(["ensemble.blocks = (1,)", "ensemble.ensemble_size = 2"])
  net = _network(methods.Plex())
  be = sorted(l.name for l in _all_layers(net) if isinstance(l, DenseBatchEnsemble))
  assert be == ["block1_mlp_dense_1", "block1_mlp_dense_2"]
  tile = [l for l in _all_layers(net) if isinstance(l, TileMembers)]
  assert len(tile) == 1
  # Block 0 runs once per example: the tiling sits after it.
  order = [l.name for l in _all_layers(net)]
  assert order.index("tile_members") > order.index("block0_add_2")
  assert net(np.zeros((3, 8, 8, 1), "float32"))["logits"].shape == (3, 2, NUM_CLASSES)


def test_sngp_normalises_every_backbone_layer():
  net = _network(methods.SNGP(), TINY_RESNET)
  convs = [l for l in _all_layers(net) if isinstance(l, keras.layers.Conv2D)]
  wrapped = [l for l in _all_layers(net) if isinstance(l, SpectralNormalization)]
  assert not convs  # Every Conv2D sits inside a wrapper, none in the graph itself.
  assert len(wrapped) == 20  # ResNet-18: stem + 16 block convs + 3 shortcuts.
  assert "gp_variance" in net.output


def _all_layers(model):
  out = []
  for layer in model.layers:
    out.append(layer)
    if isinstance(layer, keras.Model):
      out.extend(_all_layers(layer))
  return out


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: methods.BatchEnsemble(ensemble_size=0), "ensemble_size must be >= 1"),
    (lambda: methods.ShallowEnsemble(num_heads=0), "num_heads must be >= 1"),
    (lambda: methods.MCDropout(num_samples=0), "num_samples must be >= 1"),
    (lambda: methods.get_method("sngpp"), "Registered methods: batchensemble, be_sngp"),
  ],
)
def test_bad_method_arguments(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_spectral_norm_bound_must_be_positive():
  gin.parse_config(["spectral_norm.norm_bound = 0.0"])
  with pytest.raises(ValueError, match="Spectral-norm bound must be > 0, got 0.0"):
    methods.SNGP()


def test_num_factors_must_be_below_num_classes():
  gin.parse_config(["het_head.num_factors = 10"])
  with pytest.raises(
    ValueError, match="num_factors=10 must be smaller than the number of classes \\(10\\)"
  ):
    _network(methods.Heteroscedastic())
