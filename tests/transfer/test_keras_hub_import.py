"""Tests of `keras_unc.backbones.pretrained.keras_hub_import`: keras-hub presets saved on disk (offline)."""

import functools

import keras
import numpy as np
import pytest

from keras_unc.backbones import resnet, vit
from keras_unc.backbones.pretrained.init_from import import_weights
from keras_unc.backbones.pretrained.keras_hub_import import KerasHubImportError, import_keras_hub
from keras_unc.methods import Deterministic, heads, modifiers
from keras_unc.methods.base import Method
from keras_unc.training.network import build_network

keras_hub = pytest.importorskip("keras_hub")

D, HEADS, MLP, DEPTH = 16, 2, 32, 2
# Feature tolerance: float32 with different op orders (MHA einsums vs ours).
ATOL = 1e-5


def _randomise(model, seed=0):
  """Non-trivial biases, LayerNorm / BatchNorm parameters and statistics."""
  rng = np.random.default_rng(seed)
  for w in model.weights:
    value = keras.ops.convert_to_numpy(w)
    if w.path.endswith(("gamma", "moving_variance")):
      value = rng.uniform(0.5, 1.5, value.shape)
    elif not w.path.endswith("kernel"):
      value = rng.normal(0, 0.2, value.shape)
    w.assign(value.astype("float32"))


def _images(size, batch=2, seed=1):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def _hub_vit(tmp_path, use_class_token=True, **kwargs):
  hub = keras_hub.models.ViTBackbone(
    image_shape=(16, 16, 3),
    patch_size=4,
    num_layers=DEPTH,
    num_heads=HEADS,
    hidden_dim=D,
    mlp_dim=MLP,
    use_class_token=use_class_token,
    **kwargs,
  )
  _randomise(hub)
  preset = str(tmp_path / "vit_preset")
  hub.save_to_preset(preset)
  return hub, preset


def _our_vit(image_size=16, **kwargs):
  return vit(
    "Ti/4", image_size=image_size, width=D, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS, **kwargs
  )


@pytest.mark.parametrize("token", [True, False])
def test_vit_preset_gives_keras_hub_features(token, tmp_path):
  hub, preset = _hub_vit(tmp_path, use_class_token=token)
  ours = _our_vit(pooling="token" if token else "gap")
  report = import_keras_hub(ours, preset)
  assert report["kind"] == "vit" and report["loaded"] == len(ours.trainable_weights)
  x = _images(16)
  sequence = keras.ops.convert_to_numpy(hub(x))
  expected = sequence[:, 0] if token else sequence.mean(axis=1)
  np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), expected, atol=ATOL, rtol=0)


def test_vit_preset_into_a_network_via_gin_entry(tmp_path):
  hub, preset = _hub_vit(tmp_path)
  backbone = functools.partial(vit, "Ti/4", width=D, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS)
  network = build_network(
    Deterministic(), 3, (16, 16, 3), backbone=backbone, image_size=16, value_range=(0.0, 255.0)
  )  # Identity on the pixels.
  head = network.get_layer("head").kernel.numpy().copy()
  report = import_weights(network, preset)  # format="auto": a folder with config.json.
  assert report["kind"] == "vit"
  x = np.random.default_rng(2).uniform(size=(2, 16, 16, 3)).astype("float32")
  np.testing.assert_allclose(
    network(x)["embedding"], keras.ops.convert_to_numpy(hub(x))[:, 0], atol=ATOL, rtol=0
  )
  np.testing.assert_array_equal(network.get_layer("head").kernel.numpy(), head)
  with pytest.raises(ValueError, match="keep_head=False"):
    import_weights(network, preset, keep_head=True)


def test_vit_preset_posemb_resized_for_a_larger_image(tmp_path):
  hub, preset = _hub_vit(tmp_path)
  ours = _our_vit(image_size=32)  # 8 x 8 grid from a 4 x 4 one.
  import_keras_hub(ours, preset)
  table = keras.ops.convert_to_numpy(
    hub.get_layer("vit_patching_and_embedding").position_embedding.embeddings
  )
  new = ours.get_layer("posemb").embedding.numpy()[0]
  assert new.shape == (1 + 64, D)
  np.testing.assert_array_equal(new[0], table[0])  # Class token row kept.
  old_grid, new_grid = table[1:].reshape(4, 4, D), new[1:].reshape(8, 8, D)
  for (i, j), (k, m) in {
    (0, 0): (0, 0),
    (0, 3): (0, 7),
    (3, 0): (7, 0),
    (3, 3): (7, 7),
  }.items():  # Corners land on corners.
    np.testing.assert_allclose(new_grid[k, m], old_grid[i, j], atol=1e-6)
  # Corner-aligned: output row 3 of 8 samples input row 3 * (4 - 1) / (8 - 1) = 9/7.
  y = 3 * 3 / 7
  expected = (1 - (y - 1)) * old_grid[1, 0] + (y - 1) * old_grid[2, 0]
  np.testing.assert_allclose(new_grid[3, 0], expected, atol=1e-6)


def test_vit_preset_mismatches_are_clear(tmp_path):
  hub, preset = _hub_vit(tmp_path)
  with pytest.raises(KerasHubImportError, match="pooling='token'"):
    import_keras_hub(_our_vit(pooling="gap"), preset)
  # The loaded backbone can be passed instead of its folder.
  with pytest.raises(KerasHubImportError, match="posemb='learn'"):
    import_keras_hub(_our_vit(posemb="sincos2d"), hub)
  with pytest.raises(KerasHubImportError, match="2 encoder blocks, the model 3"):
    import_keras_hub(
      vit("Ti/4", image_size=16, width=D, depth=3, mlp_dim=MLP, num_heads=HEADS), hub
    )
  with pytest.raises(
    KerasHubImportError,
    match=r"transformer_block_1/dense_1 -> "
    r"block0_mlp_dense_1/kernel: preset \(16, 32\), "
    r"model \(16, 64\)",
  ):
    import_keras_hub(
      vit("Ti/4", image_size=16, width=D, depth=DEPTH, mlp_dim=64, num_heads=HEADS), hub
    )
  with pytest.raises(KerasHubImportError, match="needs our ViT"):
    import_keras_hub(resnet(18, width=0.125, image_size=32), hub)


def test_vit_layer_norm_epsilon_mismatch(tmp_path):
  _, preset = _hub_vit(tmp_path, layer_norm_epsilon=1e-5)
  with pytest.raises(KerasHubImportError, match="epsilon"):
    import_keras_hub(_our_vit(), preset)


def _hub_resnet18(**kwargs):
  return keras_hub.models.ResNetBackbone(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=[2, 2, 2, 2],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="basic_block",
    image_shape=(32, 32, 3),
    **kwargs,
  )


def test_resnet_preset_gives_keras_hub_features(tmp_path):
  hub = _hub_resnet18()
  _randomise(hub)
  preset = str(tmp_path / "resnet_preset")
  hub.save_to_preset(preset)
  ours = resnet(18, image_size=32)
  report = import_keras_hub(ours, preset)
  assert report["kind"] == "resnet" and report["loaded"] == len(ours.weights)
  x = _images(32)
  expected = keras.ops.convert_to_numpy(hub(x)).mean(axis=(1, 2))
  np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), expected, atol=ATOL, rtol=1e-5)
  with pytest.raises(
    KerasHubImportError,
    match=r"conv1_conv -> stem_conv/kernel: preset "
    r"\(7, 7, 3, 64\), model \(7, 7, 3, 32\)",
  ):
    import_keras_hub(resnet(18, width=0.5, image_size=32), preset)


def test_resnet_v2_preset_is_refused():
  with pytest.raises(KerasHubImportError, match="use_pre_activation"):
    import_keras_hub(resnet(18, image_size=32), _hub_resnet18(use_pre_activation=True))


def test_vit_preset_into_batchensemble_blocks_needs_adapt(tmp_path):
  hub, _ = _hub_vit(tmp_path)
  backbone = functools.partial(vit, "Ti/4", width=D, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS)
  method = Method(heads.BatchEnsembleLinear(), [modifiers.Ensemble(2, blocks=(1,))])
  network = build_network(method, 3, (16, 16, 3), backbone=backbone, image_size=16)
  with pytest.raises(KerasHubImportError, match="pass adapt=True"):
    import_keras_hub(network, hub)
  layer = network.get_layer("vit").get_layer("block1_mlp_dense_1")
  alpha = layer.alpha.numpy().copy()
  report = import_keras_hub(network, hub, adapt=True)
  assert layer.alpha.path in report["fresh"]
  dense = hub.get_layer("vit_encoder").encoder_layers[1].mlp.dense_1
  np.testing.assert_array_equal(layer.kernel.numpy(), keras.ops.convert_to_numpy(dense.kernel))
  np.testing.assert_array_equal(
    layer.bias.numpy(), np.stack([keras.ops.convert_to_numpy(dense.bias)] * 2)
  )
  np.testing.assert_array_equal(layer.alpha.numpy(), alpha)
