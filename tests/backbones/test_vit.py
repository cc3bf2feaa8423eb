"""Tests for the ViT backbone (`keras_unc.backbones.vit`)."""

import functools

import keras
import numpy as np
import pytest

from keras_unc import methods
from keras_unc.backbones import VIT_VARIANTS, default_conv, default_dense, vit
from keras_unc.layers.batch_ensemble import DenseBatchEnsemble
from keras_unc.layers.spectral_norm import SpectralNormalization
from keras_unc.training.network import build_network

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
    ("map", "learn"),
    ("map", "sincos2d"),
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


# --- MAP head (pooling="map", big_vision MAPHead) -----------------------------------------

MAP_DENSE = (
  "attn_query",
  "attn_key",
  "attn_value",
  "attn_out",
  "mlp_dense_1",
  "mlp_dense_2",
)


def _map_head_params(width, mlp_dim):
  probe = width
  attention = 4 * (width * width + width)  # query, key, value, out projections with bias
  layer_norm = 2 * width
  mlp = width * mlp_dim + mlp_dim + mlp_dim * width + width
  return probe + attention + layer_norm + mlp


def test_map_head_parameter_count():
  # ViT-S/16 (D=384, MLP 1536): the MAP head adds 1,774,080 parameters to the GAP model (no
  # class token in either). The position embedding depends on the image size, but equally
  # in both models, so 32 px keeps the build cheap.
  assert _map_head_params(384, 1536) == 1_774_080
  gap = vit("S/16", image_size=32, pooling="gap")
  map_ = vit("S/16", image_size=32, pooling="map")
  assert map_.count_params() - gap.count_params() == 1_774_080
  assert _num_trainable(map_) - _num_trainable(gap) == 1_774_080
  assert not any(layer.name == "class_token" for layer in map_.layers)


def _gelu(x):
  from scipy.special import erf

  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _layer_norm(x, gamma, beta, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_map_head_matches_numpy():
  model = _tiny_vit(pooling="map", num_heads=4)  # width 32, 4 heads of 8, MLP 64
  rng = np.random.default_rng(7)
  for weight in model.weights:  # Non-trivial biases and LayerNorm parameters too.
    weight.assign((0.3 * rng.normal(size=weight.shape)).astype("float32"))
  images = _images()
  tokens = keras.Model(model.input, model.get_layer("encoder_norm").output)(images)
  x = keras.ops.convert_to_numpy(tokens).astype(np.float64)  # [B, T, D]

  def w(name):
    return [keras.ops.convert_to_numpy(v).astype(np.float64) for v in model.get_layer(name).weights]

  (probe,) = w("map_head_probe")
  dense = {s: w(f"map_head_{s}") for s in MAP_DENSE}
  q = probe[0] @ dense["attn_query"][0] + dense["attn_query"][1]  # [1, D]
  k = x @ dense["attn_key"][0] + dense["attn_key"][1]  # [B, T, D]
  v = x @ dense["attn_value"][0] + dense["attn_value"][1]
  heads, head_dim = 4, 8
  out = np.zeros((x.shape[0], 32))
  for h in range(heads):
    cols = slice(h * head_dim, (h + 1) * head_dim)
    logits = np.einsum("d,btd->bt", q[0, cols], k[:, :, cols]) / np.sqrt(head_dim)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out[:, cols] = np.einsum("bt,btd->bd", probs, v[:, :, cols])
  y = out @ dense["attn_out"][0] + dense["attn_out"][1]
  z = _layer_norm(y, *w("map_head_ln"))
  z = _gelu(z @ dense["mlp_dense_1"][0] + dense["mlp_dense_1"][1])
  expected = y + z @ dense["mlp_dense_2"][0] + dense["mlp_dense_2"][1]
  actual = keras.ops.convert_to_numpy(model(images))
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_map_head_layers_come_from_the_dense_factory():
  calls = []

  def dense_factory(units, *, name, block=None, **kwargs):
    calls.append((name, block, units))
    return default_dense(units, name=name, block=block, **kwargs)

  model = _tiny_vit(pooling="map", dense_factory=dense_factory)
  head = [(n, u) for n, b, u in calls if b == "map_head"]
  assert head == [
    ("map_head_attn_query", 32),
    ("map_head_attn_key", 32),
    ("map_head_attn_value", 32),
    ("map_head_attn_out", 32),
    ("map_head_mlp_dense_1", 64),  # the ViT's mlp_dim
    ("map_head_mlp_dense_2", 32),
  ]
  built = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Dense)}
  assert built == {n for n, _, _ in calls}


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)


def test_map_head_with_sngp_and_batchensemble():
  backbone = functools.partial(vit, **dict(TINY, variant="Ti/4", pooling="map"))
  images = _images(3)

  net = build_network(methods.SNGP(), 10, (16, 16, 3), backbone=backbone, image_size=16)
  wrapped = {l.name for l in _all_layers(net) if isinstance(l, SpectralNormalization)}
  assert {f"map_head_{s}_sn" for s in MAP_DENSE} <= wrapped
  assert tuple(net(images, training=False)["logits"].shape) == (3, 1, 10)

  net = build_network(
    methods.BatchEnsemble(ensemble_size=2), 10, (16, 16, 3), backbone=backbone, image_size=16
  )
  be = {l.name for l in _all_layers(net) if isinstance(l, DenseBatchEnsemble)}
  assert {f"map_head_{s}" for s in MAP_DENSE} <= be
  logits = np.asarray(net(images, training=False)["logits"])
  assert logits.shape == (3, 2, 10)
  assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-5


def test_keras_round_trip_map(tmp_path):
  model = _tiny_vit(pooling="map")
  images = _images()
  expected = keras.ops.convert_to_numpy(model(images, training=False))
  path = str(tmp_path / "vit_map.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  actual = keras.ops.convert_to_numpy(loaded(images, training=False))
  np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_unknown_pooling_error():
  with pytest.raises(ValueError, match="pooling must be 'token', 'gap' or 'map'"):
    _tiny_vit(pooling="max")


# --- tanh GELU (flax nn.gelu) and rep_size pre-logits (big_vision) -------------------------


def _gelu_tanh(x):
  # flax nn.gelu(approximate=True), from its formula.
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def test_gelu_layer_harness(tmp_path):
  from keras_unc.backbones.vit import GELU
  from tests.layers.helpers import run_layer_test

  x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
  report = run_layer_test(
    GELU,
    {"approximate": True},
    x,
    tmp_path=tmp_path,
    expected_output_shape=(3, 5),
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=0,
    expected_num_seed_generators=0,
    run_training_check=False,
  )
  assert report.loaded_layer.approximate is True
  np.testing.assert_allclose(report.outputs[0], _gelu_tanh(x.astype(np.float64)), atol=1e-6)
  with pytest.raises(ValueError, match="GELU approximate must be True"):
    GELU("tanh")


def _mlp_block_reference(model, images, gelu):
  """Block 0 of a depth-1 ViT in NumPy: tokens in, tokens out."""
  tokens = keras.Model(model.input, model.get_layer("posemb").output)(images)
  x = keras.ops.convert_to_numpy(tokens).astype(np.float64)

  def w(name):
    return [keras.ops.convert_to_numpy(v).astype(np.float64) for v in model.get_layer(name).weights]

  y = _layer_norm(x, *w("block0_ln_1"))
  q, k, v = (
    y @ w(f"block0_attn_{s}")[0] + w(f"block0_attn_{s}")[1] for s in ("query", "key", "value")
  )
  heads, hd = 2, 16
  out = np.zeros_like(x)
  for h in range(heads):
    c = slice(h * hd, (h + 1) * hd)
    logits = np.einsum("bqd,bkd->bqk", q[..., c], k[..., c]) / np.sqrt(hd)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[..., c] = np.einsum("bqk,bkd->bqd", p, v[..., c])
  x = x + out @ w("block0_attn_out")[0] + w("block0_attn_out")[1]
  y = _layer_norm(x, *w("block0_ln_2"))
  y = gelu(y @ w("block0_mlp_dense_1")[0] + w("block0_mlp_dense_1")[1])
  return x + y @ w("block0_mlp_dense_2")[0] + w("block0_mlp_dense_2")[1]


def test_tanh_gelu_block_matches_numpy_and_differs_from_exact():
  model = _tiny_vit(depth=1, gelu_approximate=True, posemb="sincos2d", pooling="gap")
  rng = np.random.default_rng(3)
  for weight in model.trainable_weights:
    weight.assign((0.5 * rng.normal(size=weight.shape)).astype("float32"))
  images = _images()
  block = keras.Model(model.input, model.get_layer("block0_add_2").output)
  actual = keras.ops.convert_to_numpy(block(images)).astype(np.float64)
  tanh_ref = _mlp_block_reference(model, images, _gelu_tanh)
  exact_ref = _mlp_block_reference(model, images, _gelu)
  np.testing.assert_allclose(actual, tanh_ref, atol=2e-5, rtol=1e-5)
  assert np.abs(actual - exact_ref).max() > 1e-4
  # The layer itself, on the MLP pre-activations, to float tolerance.
  gelu = model.get_layer("block0_mlp_gelu")
  z = rng.normal(scale=3.0, size=(4, 64)).astype("float32")
  np.testing.assert_allclose(
    keras.ops.convert_to_numpy(gelu(z)), _gelu_tanh(z.astype(np.float64)), atol=1e-6
  )
  assert np.abs(_gelu_tanh(z.astype(np.float64)) - _gelu(z.astype(np.float64))).max() > 1e-4


@pytest.mark.parametrize("rep_size, expected", [(True, 32), (24, 24)])
def test_rep_size_pre_logits_matches_numpy(rep_size, expected):
  model = _tiny_vit(pooling="gap", rep_size=rep_size)
  assert tuple(model.output.shape) == (None, expected)
  layer = model.get_layer("pre_logits")
  assert layer.kernel.shape == (32, expected)
  np.testing.assert_array_equal(layer.bias.numpy(), 0.0)  # flax nn.Dense default.
  rng = np.random.default_rng(0)
  layer.bias.assign(rng.normal(size=expected).astype("float32"))
  images = _images()
  pooled = keras.Model(model.input, model.get_layer("pool").output)(images)
  pooled = keras.ops.convert_to_numpy(pooled).astype(np.float64)
  expected_out = np.tanh(pooled @ layer.kernel.numpy() + layer.bias.numpy())
  np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected_out, atol=1e-5)
  none = _tiny_vit(pooling="gap", rep_size=False)
  assert "pre_logits" not in {layer.name for layer in none.layers}
  assert _num_trainable(model) - _num_trainable(none) == 32 * expected + expected


def test_rep_size_comes_from_the_dense_factory():
  calls = []

  def dense_factory(units, *, name, block=None, **kwargs):
    calls.append((name, block))
    return default_dense(units, name=name, block=block, **kwargs)

  _tiny_vit(rep_size=16, dense_factory=dense_factory)
  assert ("pre_logits", "pre_logits") in calls


def test_keras_round_trip_rep_size_and_tanh_gelu(tmp_path):
  model = _tiny_vit(rep_size=True, gelu_approximate=True)
  images = _images()
  expected = keras.ops.convert_to_numpy(model(images, training=False))
  path = str(tmp_path / "vit_rep.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.get_layer("block1_mlp_gelu").approximate is True
  np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, atol=1e-6)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"rep_size": -1}, "rep_size must be an int >= 0 or a bool"),
    ({"rep_size": 1.5}, "rep_size must be an int >= 0 or a bool"),
    ({"gelu_approximate": "tanh"}, "gelu_approximate must be True"),
    ({"batchnorm_factory": lambda **k: None}, "A ViT has no BatchNorm"),
    ({"filterwise_dropout": True}, "a ViT has none"),
    ({"dropout_rate": 1.0}, "dropout_rate must be in"),
  ],
)
def test_bad_new_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _tiny_vit(**kwargs)
