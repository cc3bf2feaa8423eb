"""Tests for the ViT backbone (`keras_unc.backbones.vit`)."""

import keras
import numpy as np
import pytest

from keras_unc.backbones import VIT_VARIANTS, default_conv, default_dense, vit

TINY = dict(image_size=16, width=32, depth=2, mlp_dim=64, num_heads=2)


def _tiny_vit(**kwargs):
  config = dict(TINY, variant="Ti/4")
  config.update(kwargs)
  return vit(**config)


def _images(batch=2, size=16, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, size, size, channels)).astype("float32")


def _num_trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_parity_with_keras_hub():
  keras_hub = pytest.importorskip("keras_hub")
  # keras-hub's ViT already matches the original ViT in the details that
  # could differ: exact (erf) GELU ("gelu" in Dense), LayerNorm eps 1e-6
  # (set explicitly here anyway), pre-norm blocks, learned position
  # embedding covering the class token, final LayerNorm on all tokens.
  hub = keras_hub.models.ViTBackbone(
    image_shape=(32, 32, 3),
    patch_size=8,
    num_layers=2,
    num_heads=3,
    hidden_dim=48,
    mlp_dim=96,
    layer_norm_epsilon=1e-6,
  )
  ours = vit(
    "S/8",
    image_size=32,
    width=48,
    depth=2,
    num_heads=3,
    mlp_dim=96,
    pooling="token",
    posemb="learn",
  )

  # Make every non-kernel weight non-trivial so the copy is really tested
  # (default LayerNorm gamma=1, beta=0, zero biases would hide mistakes).
  rng = np.random.default_rng(1)
  for weight in hub.weights:
    value = keras.ops.convert_to_numpy(weight)
    if weight.path.endswith("gamma"):
      value = 1.0 + 0.2 * rng.normal(size=value.shape)
    elif not weight.path.endswith("kernel"):
      value = 0.2 * rng.normal(size=value.shape)
    weight.assign(value.astype("float32"))

  embed = hub.get_layer("vit_patching_and_embedding")
  encoder = hub.get_layer("vit_encoder")

  def copy(src_layer, dst_name, reshape=False):
    dst = ours.get_layer(dst_name)
    values = [keras.ops.convert_to_numpy(w) for w in src_layer.weights]
    if reshape:
      # keras MultiHeadAttention stores q/k/v kernels as
      # [width, heads, head_dim] and biases as [heads, head_dim], the
      # output kernel as [heads, head_dim, width]; ours are the same
      # matrices flattened head-major.
      values = [v.reshape(w.shape) for v, w in zip(values, dst.weights)]
    dst.set_weights(values)

  copy(embed.patch_embedding, "patch_embedding")
  ours.get_layer("class_token").set_weights([keras.ops.convert_to_numpy(embed.class_token)])
  ours.get_layer("posemb").set_weights(
    [keras.ops.convert_to_numpy(embed.position_embedding.embeddings)[None]]
  )
  for i, block in enumerate(encoder.encoder_layers):
    copy(block.layer_norm_1, f"block{i}_ln_1")
    copy(block.mha._query_dense, f"block{i}_attn_query", reshape=True)
    copy(block.mha._key_dense, f"block{i}_attn_key", reshape=True)
    copy(block.mha._value_dense, f"block{i}_attn_value", reshape=True)
    copy(block.mha._output_dense, f"block{i}_attn_out", reshape=True)
    copy(block.layer_norm_2, f"block{i}_ln_2")
    copy(block.mlp.dense_1, f"block{i}_mlp_dense_1")
    copy(block.mlp.dense_2, f"block{i}_mlp_dense_2")
  copy(encoder.layer_norm, "encoder_norm")
  assert _num_trainable(ours) == _num_trainable(hub)

  images = _images(size=32)
  expected = keras.ops.convert_to_numpy(hub(images))[:, 0]
  actual = keras.ops.convert_to_numpy(ours(images))
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
  "pooling,posemb",
  [
    ("token", "learn"),
    ("gap", "learn"),
    ("token", "sincos2d"),
    ("gap", "sincos2d"),
  ],
)
def test_output_shape(pooling, posemb):
  model = _tiny_vit(pooling=pooling, posemb=posemb)
  assert isinstance(model, keras.Model)
  assert model.name == "vit"
  out = model(_images())
  assert tuple(out.shape) == (2, 32)
  has_class_token = any(layer.name == "class_token" for layer in model.layers)
  assert has_class_token == (pooling == "token")


def test_non_square_image():
  model = _tiny_vit(image_size=(16, 24), patch_size=(4, 8))
  images = np.zeros((1, 16, 24, 3), "float32")
  assert tuple(model(images).shape) == (1, 32)


def test_sincos_posemb_is_fixed_and_matches_numpy():
  model = _tiny_vit(posemb="sincos2d", pooling="gap", image_size=(8, 12))
  layer = model.get_layer("posemb")
  assert layer.trainable_weights == []
  assert len(layer.non_trainable_weights) == 1
  table = keras.ops.convert_to_numpy(layer.non_trainable_weights[0])[0]

  # 2D sin-cos table written out by hand, big_vision `posemb_sincos_2d`.
  rows, cols, dim = 2, 3, 32
  quarter = dim // 4
  expected = np.zeros((rows * cols, dim))
  for r in range(rows):
    for c in range(cols):
      for j in range(quarter):
        omega = 10000.0 ** (-j / (quarter - 1))
        token = r * cols + c
        expected[token, j] = np.sin(c * omega)
        expected[token, quarter + j] = np.cos(c * omega)
        expected[token, 2 * quarter + j] = np.sin(r * omega)
        expected[token, 3 * quarter + j] = np.cos(r * omega)
  np.testing.assert_allclose(table, expected, atol=1e-6)

  # No position weight is trainable.
  trainable = [w.path for w in model.trainable_weights]
  assert not any("posemb" in path for path in trainable)


def test_learned_posemb_covers_class_token():
  model = _tiny_vit()
  (embedding,) = model.get_layer("posemb").trainable_weights
  assert tuple(embedding.shape) == (1, (16 // 4) ** 2 + 1, 32)


def test_indivisible_image_size_error():
  with pytest.raises(ValueError) as info:
    vit("S/16", image_size=30)
  message = str(info.value)
  for part in ("image_size 30", "patch size 16", "ViT-S/16", "32"):
    assert part in message


def test_unknown_variant_error():
  with pytest.raises(ValueError) as info:
    vit("XL/16")
  message = str(info.value)
  assert "'XL/16'" in message
  for size in VIT_VARIANTS:
    assert f"'{size}/<patch>'" in message
  with pytest.raises(ValueError, match="Unknown ViT variant"):
    vit("S")


def test_factories_called_with_block_index():
  dense_calls, conv_calls = [], []

  def dense_factory(units, *, name, block=None, **kwargs):
    dense_calls.append((name, block, units))
    return default_dense(units, name=name, block=block, **kwargs)

  def conv_factory(filters, kernel_size, *, name, block=None, **kwargs):
    conv_calls.append((name, block))
    return default_conv(filters, kernel_size, name=name, block=block, **kwargs)

  model = _tiny_vit(depth=3, dense_factory=dense_factory, conv_factory=conv_factory)
  assert conv_calls == [("patch_embedding", None)]
  for suffix, units in [("mlp_dense_1", 64), ("mlp_dense_2", 32)]:
    calls = [(b, u) for n, b, u in dense_calls if n.endswith(suffix)]
    assert calls == [(0, units), (1, units), (2, units)]
  for i in range(3):
    names = {n for n, b, _ in dense_calls if b == i}
    assert names == {
      f"block{i}_{s}"
      for s in (
        "attn_query",
        "attn_key",
        "attn_value",
        "attn_out",
        "mlp_dense_1",
        "mlp_dense_2",
      )
    }
  # Every Dense / Conv2D in the model came from a factory.
  built = {
    layer.name
    for layer in model.layers
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
  }
  assert built == {n for n, _, _ in dense_calls} | {"patch_embedding"}


def test_vit_b16_parameter_count():
  # Published ViT-B/16 (ImageNet-1k head): 86,567,656 parameters.
  backbone = vit("B/16", image_size=224)
  logits = keras.layers.Dense(1000)(backbone.output)
  model = keras.Model(backbone.input, logits)
  assert model.count_params() == 86_567_656
  assert _num_trainable(model) == 86_567_656


@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_keras_round_trip(tmp_path, posemb):
  model = _tiny_vit(posemb=posemb, dropout=0.1, attention_dropout=0.1)
  images = _images()
  expected = keras.ops.convert_to_numpy(model(images, training=False))
  path = str(tmp_path / "vit.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  actual = keras.ops.convert_to_numpy(loaded(images, training=False))
  np.testing.assert_allclose(actual, expected, atol=1e-6)
