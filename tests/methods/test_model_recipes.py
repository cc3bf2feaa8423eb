"""Methods that reach into the backbone: ub's MC dropout in every residual block
(`MCDropout(placement="backbone")`) and BatchEnsemble's per-member BatchNorm
(`ensemble.use_ensemble_bn`).
"""

import functools

import gin
import keras
import numpy as np
import pytest

from keras_unc import methods
from keras_unc.backbones import resnet, vit, wide_resnet
from keras_unc.layers.batch_ensemble import BatchNormBatchEnsemble
from keras_unc.layers.mc_dropout import MCDropout as MCDropoutLayer
from keras_unc.methods import heads, modifiers
from keras_unc.methods.base import Method
from keras_unc.training.network import build_network

TINY_RESNET = functools.partial(resnet, 18, width=0.125, stem="cifar")
TINY_VIT = functools.partial(vit, "Ti/4", width=16, depth=2, mlp_dim=32, num_heads=2)
CLASSES, S = 4, 3


def _net(method, backbone=TINY_RESNET):
  return build_network(method, CLASSES, (8, 8, 3), backbone=backbone, image_size=8)


def _images(batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, 8, 8, 3)).astype("float32")


def _np(x):
  return keras.ops.convert_to_numpy(x)


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)


def _randomise_bn(net, seed=0):
  rng = np.random.default_rng(seed)
  for layer in _all_layers(net):
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.gamma.shape[0]
      layer.set_weights(
        [
          rng.uniform(0.5, 1.5, c),
          rng.normal(0, 0.1, c),
          rng.normal(0, 0.3, c),
          rng.uniform(0.5, 1.5, c),
        ]
      )


def _backbone_mc(**kwargs):
  return methods.MCDropout(rate=0.3, num_samples=S, placement="backbone", **kwargs)


# --- MC dropout in the backbone ------------------------------------------------------------


def test_backbone_mc_dropout_samples_differ_and_probs_are_their_mean():
  net = _net(_backbone_mc(filterwise=True))
  drops = [l for l in _all_layers(net) if isinstance(l, MCDropoutLayer)]
  assert len(drops) == 12 and all(d.noise_shape == (None, 1, 1, None) for d in drops)
  assert net.get_layer("head").kernel.shape == (16 * 4, CLASSES)  # A plain linear head.
  x = _images()
  out = net(x, training=False)
  logits = _np(out["logits"])
  assert logits.shape == (2, S, CLASSES)
  assert not np.allclose(logits[:, 0], logits[:, 1])  # Samples are different passes.
  mean = _np(keras.ops.softmax(out["logits"], axis=-1)).mean(axis=1)
  np.testing.assert_allclose(_np(out["probs"]), mean, atol=1e-6)  # What the export returns.
  assert _np(out["embedding"]).shape == (2, 16 * 4)
  train = net(x, training=True)
  assert _np(train["logits"]).shape == (2, 1, CLASSES)  # One sample in training.
  assert _np(train["embedding"]).shape == (2, 16 * 4)


def test_backbone_mc_dropout_uses_moving_statistics_at_test():
  net = _net(_backbone_mc())
  _randomise_bn(net)
  for layer in _all_layers(net):
    if isinstance(layer, MCDropoutLayer):
      layer.rate = 0.0  # Dropout off: what is left is the BatchNorm mode.
  x = _images(batch=3)
  stats = [w.numpy().copy() for w in net.non_trainable_weights]
  batch = _np(net(x, training=False)["logits"])
  single = np.concatenate([_np(net(x[i : i + 1], training=False)["logits"]) for i in range(3)])
  np.testing.assert_allclose(batch, single, atol=1e-5)  # No batch statistics at test ...
  for a, b in zip(stats, net.non_trainable_weights):
    np.testing.assert_array_equal(a, b.numpy())  # ... and no update of the moving ones.
  plain = _net(methods.Deterministic())
  for layer in plain.backbone.layers:
    if layer.weights:
      layer.set_weights(net.backbone.get_layer(layer.name).get_weights())
  expected = _np(plain.backbone(x, training=False))
  np.testing.assert_allclose(_np(net.backbone(x, training=False))[:3], expected, atol=1e-5)
  net(x, training=True)
  assert any(not np.array_equal(a, b.numpy()) for a, b in zip(stats, net.non_trainable_weights))


def test_backbone_filterwise_dropout_zeroes_whole_channels_in_the_network():
  net = _net(_backbone_mc(filterwise=True))
  bb = net.backbone
  probe = keras.Model(
    bb.input,
    [bb.get_layer("stage1_block1_relu1").output, bb.get_layer("stage1_block1_dropout1").output],
  )
  relu, dropped = (_np(t) for t in probe(np.tile(_images(batch=8), (S, 1, 1, 1))))
  active = relu != 0
  zero = (dropped == 0) & active
  kept = np.isclose(dropped, relu / 0.7, rtol=1e-5) & active
  channels = active.any(axis=(1, 2))  # [rows, C] with some non-zero activation.
  all_zero = (zero | ~active).all(axis=(1, 2)) & channels
  all_kept = (kept | ~active).all(axis=(1, 2)) & channels
  assert (all_zero ^ all_kept)[channels].all()  # Per example and channel: all or nothing.
  assert all_zero.any() and all_kept.any()


def test_backbone_mc_dropout_on_wide_resnet_and_in_every_vit_mlp():
  net = _net(_backbone_mc(), backbone=functools.partial(wide_resnet, 10, 1))
  assert _np(net(_images(), training=False)["logits"]).shape == (2, S, CLASSES)
  # ViT: both dropouts of every encoder block's MLP are always-on MC dropout, nothing else.
  net = _net(_backbone_mc(), backbone=TINY_VIT)
  mc = sorted(l.name for l in _all_layers(net.backbone) if isinstance(l, MCDropoutLayer))
  depth = sum(1 for l in _all_layers(net.backbone) if l.name.endswith("_ln_2"))
  assert depth >= 1 and mc == sorted(
    f"block{i}_mlp_mc_dropout_{j}" for i in range(depth) for j in (1, 2)
  )
  assert all(l.rate == 0.3 for l in _all_layers(net.backbone) if isinstance(l, MCDropoutLayer))
  logits = _np(net(_images(), training=False)["logits"])
  assert logits.shape == (2, S, CLASSES)
  assert not np.allclose(logits[:, 0], logits[:, 1])  # The S samples differ at inference.
  assert _np(net(_images(), training=True)["logits"]).shape == (2, 1, CLASSES)
  with pytest.raises(ValueError, match="a ViT has none"):
    _net(_backbone_mc(filterwise=True), backbone=TINY_VIT)


def test_last_layer_placement_is_the_default_and_untouched():
  method = methods.MCDropout(rate=0.2, num_samples=S)
  assert method.placement == "last_layer" and method.members == 1
  net = _net(method)
  assert not any(isinstance(l, MCDropoutLayer) for l in _all_layers(net.backbone))
  assert _np(net(_images(), training=False)["logits"]).shape == (2, S, CLASSES)


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: methods.MCDropout(placement="everywhere"), "Unknown MC dropout placement"),
    (lambda: methods.MCDropout(filterwise=True), "needs placement='backbone'"),
    (lambda: methods.MCDropout(rate=1.0, placement="backbone"), r"rate must be in \(0, 1\)"),
    (lambda: methods.MCDropout(num_samples=0, placement="backbone"), "num_samples must be"),
  ],
)
def test_bad_mc_dropout_arguments(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_gin_binds_the_ub_recipe(_clear_gin):
  gin.parse_config(
    [
      "MCDropout.placement = 'backbone'",
      "MCDropout.rate = 0.05",
      "MCDropout.filterwise = True",
      "MCDropout.num_samples = 10",
    ]
  )
  method = methods.MCDropout()
  assert method.members == 10
  assert method.backbone_overrides() == {
    "tile_members": 10,
    "tile_train_members": 1,
    "dropout_rate": 0.05,
    "filterwise_dropout": True,
  }


# --- Per-member BatchNorm (use_ensemble_bn) -------------------------------------------------


def _be(use_ensemble_bn, members=2, blocks=None):
  return Method(
    heads.BatchEnsembleLinear(),
    [modifiers.Ensemble(members, blocks=blocks, use_ensemble_bn=use_ensemble_bn)],
  )


def test_use_ensemble_bn_puts_a_per_member_batchnorm_everywhere():
  net = _net(_be(True))
  bns = [l for l in _all_layers(net.backbone) if "bn" in l.name]
  assert bns and all(isinstance(l, BatchNormBatchEnsemble) and l.ensemble_size == 2 for l in bns)
  assert net.backbone.get_layer("stage1_block1_bn2").gamma.shape == (2, 8)
  assert net.backbone.get_layer("stem_bn").momentum == 0.9  # The backbone's BN arguments.
  np.testing.assert_array_equal(net.backbone.get_layer("stage1_block1_bn2").gamma.numpy(), 0.0)
  shared = _net(_be(False))
  assert not any(isinstance(l, BatchNormBatchEnsemble) for l in _all_layers(shared))
  assert _np(net(_images(), training=True)["logits"]).shape == (2, 2, CLASSES)


def test_use_ensemble_bn_members_get_their_own_statistics():
  net = _net(_be(True))
  x = _images(batch=4)
  net(x, training=True)
  moving = net.backbone.get_layer("stem_bn").moving_mean.numpy()
  assert moving.shape == (2, 8) and not np.allclose(moving[0], moving[1])


def test_use_ensemble_bn_only_in_chosen_blocks():
  net = _net(_be(True, blocks=("stage3_block1", "stage3_block2", "stage4_block1", "stage4_block2")))
  kinds = {l.name: type(l) for l in _all_layers(net.backbone) if "bn" in l.name}
  assert kinds["stem_bn"] is keras.layers.BatchNormalization
  assert kinds["stage2_block2_bn1"] is keras.layers.BatchNormalization
  assert kinds["stage3_block1_bn1"] is BatchNormBatchEnsemble
  assert kinds["stage3_block1_shortcut_bn"] is BatchNormBatchEnsemble


def test_use_ensemble_bn_errors():
  with pytest.raises(ValueError, match="use_ensemble_bn must be True or False"):
    modifiers.Ensemble(2, use_ensemble_bn="yes")
  with pytest.raises(ValueError, match="A ViT has no BatchNorm"):
    _net(_be(True), backbone=TINY_VIT)


def test_use_ensemble_bn_gin_reaches_be_sngp(_clear_gin):
  gin.parse_config(["ensemble.use_ensemble_bn = True", "ensemble.ensemble_size = 2"])
  method = methods.BESNGP()
  assert "batchnorm_factory" in method.backbone_overrides()
