"""Tests of `keras_unc.backbones.pretrained.npz_import`: public ViT `.npz` names, layouts and resizing."""

import functools
import math

import keras
import numpy as np
import pytest
import scipy.ndimage
import scipy.special

from keras_unc.backbones import vit
from keras_unc.backbones.pretrained import npz_import
from keras_unc.backbones.pretrained.npz_import import NpzImportError
from keras_unc.methods import Deterministic, heads, modifiers
from keras_unc.methods.base import Method
from keras_unc.training.network import build_network

D, HEADS, MLP, PATCH, DEPTH = 16, 2, 32, 4, 2
# flax ViTs (the sources of these checkpoints) use the tanh GELU; round trips start there.
TINY = dict(width=D, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS, gelu_approximate=True)


def _vit(image_size=16, **kwargs):
  return vit("Ti/4", image_size=image_size, **{**TINY, **kwargs})


def _randomise(model, seed=0):
  """Non-trivial values everywhere (LayerNorm scale near 1), so every copy matters."""
  rng = np.random.default_rng(seed)
  for w in model.trainable_weights:
    value = rng.normal(0, 0.3, w.shape)
    if w.path.endswith("gamma") and "batch" not in w.path:
      value += 1.0
    w.assign(value.astype("float32"))


def _images(size=16, batch=2, seed=1):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


def _out(model, x):
  out = model(x)
  return keras.ops.convert_to_numpy(out["logits"] if isinstance(out, dict) else out)


# The public names, spelled out here from big_vision/models/vit.py and
# vision_transformer/vit_jax/models_vit.py (independently of the module under test).
NAMES = {
  "big_vision": dict(
    ln1="LayerNorm_0",
    attn="MultiHeadDotProductAttention_0",
    ln2="LayerNorm_1",
    mlp="MlpBlock_0",
    posemb="pos_embedding",
  ),
  "vit_npz": dict(
    ln1="LayerNorm_0",
    attn="MultiHeadDotProductAttention_1",
    ln2="LayerNorm_2",
    mlp="MlpBlock_3",
    posemb="Transformer/posembed_input/pos_embedding",
  ),
}


def _public_checkpoint(fmt, grid=4, token=True, seed=0, depth=DEPTH):
  """A random checkpoint in the public layout (flax shapes)."""
  n = NAMES[fmt]
  rng = np.random.default_rng(seed)
  r = lambda *shape: rng.normal(0, 0.3, shape).astype("float32")  # noqa: E731
  hd = D // HEADS
  p = {
    "embedding/kernel": r(PATCH, PATCH, 3, D),
    "embedding/bias": r(D),
    "Transformer/encoder_norm/scale": 1 + r(D),
    "Transformer/encoder_norm/bias": r(D),
  }
  covers_cls = fmt == "vit_npz" and token
  p[n["posemb"]] = r(1, grid * grid + int(covers_cls), D)
  if token:
    p["cls"] = r(1, 1, D)
  for i in range(depth):
    b = f"Transformer/encoderblock_{i}/"
    for ln in (n["ln1"], n["ln2"]):
      p[f"{b}{ln}/scale"], p[f"{b}{ln}/bias"] = 1 + r(D), r(D)
    for name in ("query", "key", "value"):
      p[f"{b}{n['attn']}/{name}/kernel"] = r(D, HEADS, hd)
      p[f"{b}{n['attn']}/{name}/bias"] = r(HEADS, hd)
    p[f"{b}{n['attn']}/out/kernel"] = r(HEADS, hd, D)
    p[f"{b}{n['attn']}/out/bias"] = r(D)
    p[f"{b}{n['mlp']}/Dense_0/kernel"], p[f"{b}{n['mlp']}/Dense_0/bias"] = r(D, MLP), r(MLP)
    p[f"{b}{n['mlp']}/Dense_1/kernel"], p[f"{b}{n['mlp']}/Dense_1/bias"] = r(MLP, D), r(D)
  return p


def _layer_norm(x, scale, bias):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def _gelu_tanh(y):
  """flax `nn.gelu` (approximate=True), written out from its formula."""
  return 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))


def _gelu_exact(y):
  return 0.5 * y * (1 + scipy.special.erf(y / math.sqrt(2)))


def _numpy_vit(p, images, fmt, token, depth=DEPTH, gelu=_gelu_tanh):
  """The flax ViT forward pass in NumPy (float64), from the public parameters; with
  `pre_logits/*` the tanh representation layer after the pooling (big_vision `rep_size`).
  """
  n = NAMES[fmt]
  x = images.astype("float64")
  b, h, w, c = x.shape
  gh, gw = h // PATCH, w // PATCH
  patches = x.reshape(b, gh, PATCH, gw, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
  x = patches.reshape(b, gh * gw, -1) @ p["embedding/kernel"].reshape(-1, D)
  x = x + p["embedding/bias"]
  if fmt == "big_vision":  # posemb added to the patches, then the class token prepended.
    x = x + p[n["posemb"]]
    if token:
      x = np.concatenate([np.tile(p["cls"], (b, 1, 1)), x], axis=1)
  else:  # vision_transformer: class token first, then the posemb over all tokens.
    if token:
      x = np.concatenate([np.tile(p["cls"], (b, 1, 1)), x], axis=1)
    x = x + p[n["posemb"]]
  for i in range(depth):
    pre = f"Transformer/encoderblock_{i}/"
    a = pre + n["attn"] + "/"
    y = _layer_norm(x, p[pre + n["ln1"] + "/scale"], p[pre + n["ln1"] + "/bias"])
    q, k, v = (
      np.einsum("btd,dhk->bthk", y, p[a + s + "/kernel"]) + p[a + s + "/bias"]
      for s in ("query", "key", "value")
    )
    logits = np.einsum("bqhk,bthk->bhqt", q, k) / math.sqrt(D // HEADS)
    probs = scipy.special.softmax(logits, axis=-1)
    o = np.einsum("bhqt,bthk->bqhk", probs, v)
    x = x + np.einsum("bqhk,hkd->bqd", o, p[a + "out/kernel"]) + p[a + "out/bias"]
    m = pre + n["mlp"] + "/"
    y = _layer_norm(x, p[pre + n["ln2"] + "/scale"], p[pre + n["ln2"] + "/bias"])
    y = y @ p[m + "Dense_0/kernel"] + p[m + "Dense_0/bias"]
    x = x + gelu(y) @ p[m + "Dense_1/kernel"] + p[m + "Dense_1/bias"]
  x = _layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
  x = x[:, 0] if token else x.mean(axis=1)
  if "pre_logits/kernel" in p:
    x = np.tanh(x @ p["pre_logits/kernel"] + p["pre_logits/bias"])
  return x


@pytest.mark.parametrize("fmt", ["big_vision", "vit_npz"])
@pytest.mark.parametrize("token", [True, False])
def test_public_layout_matches_numpy_reference(fmt, token):
  ckpt = _public_checkpoint(fmt, token=token)
  # Built with the exact GELU: the import switches it to flax's tanh form.
  model = _vit(pooling="token" if token else "gap", gelu_approximate=False)
  report = npz_import.import_npz(model, ckpt, format="auto")
  assert report["format"] == fmt and report["loaded"] == len(ckpt)
  assert report["gelu"] == "tanh"
  x = _images()
  np.testing.assert_allclose(_out(model, x), _numpy_vit(ckpt, x, fmt, token), atol=2e-5)


def test_gelu_form_is_the_sources_and_can_be_chosen():
  ckpt = _public_checkpoint("vit_npz")
  x = _images()
  tanh_ref = _numpy_vit(ckpt, x, "vit_npz", True)
  exact_ref = _numpy_vit(ckpt, x, "vit_npz", True, gelu=_gelu_exact)
  assert np.abs(tanh_ref - exact_ref).max() > 1e-4  # The forms are distinguishable here.
  model = _vit(gelu_approximate=True)
  report = npz_import.import_npz(model, ckpt, gelu="exact")  # e.g. timm weights.
  assert report["gelu"] == "exact"
  np.testing.assert_allclose(_out(model, x), exact_ref, atol=2e-5)
  report = npz_import.import_npz(model, ckpt, gelu="keep")
  assert report["gelu"] == "exact"
  with pytest.raises(NpzImportError, match="Unknown gelu 'erf'"):
    npz_import.import_npz(model, ckpt, gelu="erf")


@pytest.mark.parametrize("rep_size", [True, 24])
def test_pre_logits_load_into_rep_size_and_match_numpy(rep_size):
  ckpt = _public_checkpoint("big_vision", token=False)
  width = D if rep_size is True else rep_size
  rng = np.random.default_rng(5)
  ckpt["pre_logits/kernel"] = rng.normal(0, 0.3, (D, width)).astype("float32")
  ckpt["pre_logits/bias"] = rng.normal(0, 0.3, width).astype("float32")
  ckpt["head/kernel"], ckpt["head/bias"] = np.ones((width, 5)), np.ones(5)
  model = _vit(pooling="gap", rep_size=rep_size)
  report = npz_import.import_npz(model, ckpt)
  assert "pre_logits/kernel" not in report["skipped"] and "head/kernel" in report["skipped"]
  x = _images()
  np.testing.assert_allclose(_out(model, x), _numpy_vit(ckpt, x, "big_vision", False), atol=2e-5)
  net = _network(pooling="gap", rep_size=rep_size)  # keep_head works on top of pre_logits.
  npz_import.import_npz(net, ckpt, keep_head=True)
  np.testing.assert_array_equal(net.get_layer("head").kernel.numpy(), 1.0)
  exported = npz_import.export_npz(model, format="big_vision")
  np.testing.assert_array_equal(exported["pre_logits/kernel"], ckpt["pre_logits/kernel"])
  with pytest.raises(NpzImportError, match="pre_logits/kernel"):  # Missing from a checkpoint.
    npz_import.import_npz(_vit(pooling="gap", rep_size=rep_size), _public_checkpoint("big_vision"))


@pytest.mark.parametrize("fmt", ["big_vision", "vit_npz", "plex"])
@pytest.mark.parametrize(
  "pooling,posemb",
  [("token", "learn"), ("gap", "learn"), ("token", "sincos2d"), ("gap", "sincos2d")],
)
def test_round_trip_outputs_bit_identical(fmt, pooling, posemb, tmp_path):
  src = _vit(pooling=pooling, posemb=posemb)
  _randomise(src)
  path = str(tmp_path / "ckpt.npz")
  arrays = npz_import.export_npz(src, path, format=fmt)
  assert ("cls" in arrays) == (pooling == "token")
  dst = _vit(pooling=pooling, posemb=posemb)
  npz_import.import_npz(dst, path, format=fmt)
  x = _images()
  np.testing.assert_array_equal(_out(dst, x), _out(src, x))
  moved = {"class_token", "posemb"} if fmt == "big_vision" and pooling == "token" else set()
  for a, b in zip(src.weights, dst.weights):
    if a.path.split("/")[0] not in moved:
      np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_big_vision_class_token_folds_its_position_row():
  src = _vit()
  _randomise(src)
  arrays = npz_import.export_npz(src, format="big_vision")
  cls = src.get_layer("class_token").token.numpy()
  pe = src.get_layer("posemb").embedding.numpy()
  np.testing.assert_array_equal(arrays["cls"], cls + pe[:, :1])
  np.testing.assert_array_equal(arrays["pos_embedding"], pe[:, 1:])
  dst = _vit()
  npz_import.import_npz(dst, arrays)
  np.testing.assert_array_equal(dst.get_layer("posemb").embedding.numpy()[:, 0], 0.0)


def test_prefix_optimizer_state_and_scanned_layout_are_handled():
  ckpt = _public_checkpoint("big_vision")
  stacked = {}
  for key in [k for k in ckpt if k.startswith("Transformer/encoderblock_")]:
    rest = key.split("/", 2)[2]
    stacked.setdefault(rest, [None] * DEPTH)[int(key.split("/")[1].split("_")[1])] = ckpt[key]
  scanned = {k: v for k, v in ckpt.items() if not k.startswith("Transformer/encoderblock_")}
  scanned.update({f"Transformer/encoderblock/{k}": np.stack(v) for k, v in stacked.items()})
  wrapped = {f"params/img/{k}": v for k, v in scanned.items()}
  wrapped["opt/state/mu/embedding/kernel"] = np.zeros(3)  # Not model parameters.
  a, b = _vit(), _vit()
  npz_import.import_npz(a, ckpt)
  npz_import.import_npz(b, wrapped)
  for va, vb in zip(a.weights, b.weights):
    np.testing.assert_array_equal(va.numpy(), vb.numpy())


def _bilinear_by_hand(grid, new_rows, new_cols):
  """Corner-aligned bilinear resampling, one output position at a time."""
  rows, cols, d = grid.shape
  out = np.zeros((new_rows, new_cols, d))
  for i in range(new_rows):
    for j in range(new_cols):
      y = i * (rows - 1) / (new_rows - 1)
      x = j * (cols - 1) / (new_cols - 1)
      y0, x0 = min(int(y), rows - 2), min(int(x), cols - 2)
      dy, dx = y - y0, x - x0
      out[i, j] = (
        (1 - dy) * (1 - dx) * grid[y0, x0]
        + (1 - dy) * dx * grid[y0, x0 + 1]
        + dy * (1 - dx) * grid[y0 + 1, x0]
        + dy * dx * grid[y0 + 1, x0 + 1]
      )
  return out


@pytest.mark.parametrize("new", [(7, 7), (2, 2), (6, 3)])
def test_resample_posemb_is_bilinear_and_keeps_class_token(new):
  rng = np.random.default_rng(0)
  posemb = rng.normal(size=(1, 1 + 16, 5)).astype("float32")
  out = npz_import.resample_posemb(posemb, new, num_prefix_tokens=1)
  assert out.shape == (1, 1 + new[0] * new[1], 5)
  np.testing.assert_array_equal(out[:, 0], posemb[:, 0])
  expected = _bilinear_by_hand(posemb[0, 1:].reshape(4, 4, 5).astype("float64"), *new)
  np.testing.assert_allclose(out[0, 1:].reshape(*new, 5), expected, atol=1e-6)
  if new[0] == new[1]:  # big_vision's own call: scipy.ndimage.zoom(order=1).
    zoomed = scipy.ndimage.zoom(
      posemb[0, 1:].reshape(4, 4, 5), (new[0] / 4, new[1] / 4, 1), order=1
    )
    np.testing.assert_allclose(out[0, 1:].reshape(*new, 5), zoomed, atol=1e-5)


@pytest.mark.parametrize("fmt", ["big_vision", "vit_npz"])
def test_import_resizes_posemb_to_the_model_grid(fmt):
  ckpt = _public_checkpoint(fmt, grid=4)  # 16 px / patch 4.
  model = _vit(image_size=24)  # 6 x 6 grid.
  report = npz_import.import_npz(model, ckpt, format=fmt)
  assert report["posemb_resized"]
  table = model.get_layer("posemb").embedding.numpy()
  pe = ckpt[NAMES[fmt]["posemb"]]
  grid = pe[0, 1:] if fmt == "vit_npz" else pe[0]
  expected_first = pe[:, 0] if fmt == "vit_npz" else np.zeros((1, D))
  np.testing.assert_array_equal(table[:, 0], expected_first)
  np.testing.assert_allclose(
    table[0, 1:].reshape(6, 6, D),
    _bilinear_by_hand(grid.reshape(4, 4, D).astype("float64"), 6, 6),
    atol=1e-6,
  )
  with pytest.raises(NpzImportError, match="resize_posemb=True"):
    npz_import.import_npz(_vit(image_size=24), ckpt, format=fmt, resize_posemb=False)


def test_missing_and_unknown_names_are_listed():
  ckpt = _public_checkpoint("big_vision")
  del ckpt["Transformer/encoderblock_1/LayerNorm_1/scale"]
  ckpt["Transformer/encoderblock_1/LayerNorm_9/scale"] = np.ones(D, "float32")
  with pytest.raises(NpzImportError) as err:
    npz_import.import_npz(_vit(), ckpt, format="big_vision")
  message = str(err.value)
  assert (
    "Expected by the model but not in the checkpoint (1): "
    "Transformer/encoderblock_1/LayerNorm_1/scale" in message
  )
  assert (
    "In the checkpoint but not expected by the model (1): "
    "Transformer/encoderblock_1/LayerNorm_9/scale" in message
  )
  # The same checkpoint loads once the stray key is ignored and the missing one restored.
  ckpt["Transformer/encoderblock_1/LayerNorm_1/scale"] = np.ones(D, "float32")
  npz_import.import_npz(_vit(), ckpt, ignore=("*/LayerNorm_9/*",))


def test_wrong_depth_and_format_are_reported():
  ckpt = _public_checkpoint("vit_npz", depth=3)
  with pytest.raises(NpzImportError, match="encoderblock_2/MlpBlock_3/Dense_0/kernel"):
    npz_import.import_npz(_vit(), ckpt)
  with pytest.raises(NpzImportError, match="Expected by the model"):
    npz_import.import_npz(_vit(), _public_checkpoint("vit_npz"), format="big_vision")
  with pytest.raises(NpzImportError, match="Unknown format"):
    npz_import.import_npz(_vit(), ckpt, format="timm")


def test_wrong_width_lists_shapes():
  ckpt = _public_checkpoint("big_vision")
  with pytest.raises(
    NpzImportError,
    match=r"embedding/kernel: checkpoint \(4, 4, 3, 16\), "
    r"model \(4, 4, 3, 32\)",
  ):
    npz_import.import_npz(_vit(width=32, mlp_dim=64), ckpt)


def _network(num_classes=5, method=None, **vit_kwargs):
  backbone = functools.partial(vit, "Ti/4", **{**TINY, **vit_kwargs})
  return build_network(
    method or Deterministic(), num_classes, (16, 16, 3), backbone=backbone, image_size=16
  )


def test_head_kept_or_reinitialised():
  src = _network()
  _randomise(src)
  arrays = npz_import.export_npz(src, format="vit_npz")
  assert arrays["head/kernel"].shape == (D, 5)
  x = _images()

  kept = _network()
  npz_import.import_npz(kept, arrays, keep_head=True)
  np.testing.assert_array_equal(_out(kept, x), _out(src, x))

  fresh = _network(num_classes=7)  # New classes: the head keeps its (zero) initialisation.
  report = npz_import.import_npz(fresh, arrays)
  assert "head/kernel" in report["skipped"]
  np.testing.assert_array_equal(fresh.get_layer("head").kernel.numpy(), 0.0)
  np.testing.assert_array_equal(
    fresh.get_layer("vit").get_layer("block1_mlp_dense_2").kernel.numpy(),
    src.get_layer("vit").get_layer("block1_mlp_dense_2").kernel.numpy(),
  )

  with pytest.raises(NpzImportError, match=r"head/kernel: checkpoint \(16, 5\), model \(16, 7\)"):
    npz_import.import_npz(_network(num_classes=7), arrays, keep_head=True)


def test_pre_logits_is_dropped_and_blocks_keep_head():
  ckpt = _public_checkpoint("vit_npz")
  ckpt["pre_logits/kernel"], ckpt["pre_logits/bias"] = np.ones((D, D)), np.ones(D)
  ckpt["head/kernel"], ckpt["head/bias"] = np.ones((D, 5)), np.ones(5)
  report = npz_import.import_npz(_network(), ckpt)
  assert {"pre_logits/kernel", "head/kernel"} <= set(report["skipped"])
  with pytest.raises(NpzImportError, match=r"rep_size=<the checkpoint's pre_logits width, 16>"):
    npz_import.import_npz(_network(), ckpt, keep_head=True)


def _be_method(members=2):
  return Method(heads.BatchEnsembleLinear(), [modifiers.Ensemble(members, blocks=(1,))])


def test_plex_batchensemble_names_and_round_trip():
  src = _network(method=_be_method())
  _randomise(src)
  arrays = npz_import.export_npz(src, format="plex")
  mlp = "Transformer/encoderblock_1/MlpBlock_3/Dense_0/"
  assert arrays[mlp + "fast_weight_alpha"].shape == (2, D)
  assert arrays[mlp + "fast_weight_gamma"].shape == (2, MLP)
  assert arrays[mlp + "bias"].shape == (2, MLP)
  assert arrays["batchensemble_head/kernel"].shape == (D, 5)
  assert "Transformer/encoderblock_0/MlpBlock_3/Dense_0/fast_weight_alpha" not in arrays
  assert npz_import.detect_format(arrays) == "plex"
  dst = _network(method=_be_method())
  npz_import.import_npz(dst, arrays, keep_head=True)
  x = _images()
  np.testing.assert_array_equal(_out(dst, x), _out(src, x))
  with pytest.raises(
    NpzImportError,
    match=r"fast_weight_alpha: checkpoint \(2, 16\), model "
    r"\(3, 16\)",
  ):
    npz_import.import_npz(_network(method=_be_method(3)), arrays)


def test_deterministic_checkpoint_into_batchensemble_needs_adapt():
  ckpt = _public_checkpoint("vit_npz")
  with pytest.raises(NpzImportError, match="fast_weight_alpha"):
    npz_import.import_npz(_network(method=_be_method()), ckpt)
  net = _network(method=_be_method())
  layer = net.get_layer("vit").get_layer("block1_mlp_dense_1")
  alpha = layer.alpha.numpy().copy()
  report = npz_import.import_npz(net, ckpt, adapt=True)
  assert any("fast_weight_alpha" in f for f in report["fresh"])
  mlp = "Transformer/encoderblock_1/MlpBlock_3/Dense_0/"
  np.testing.assert_array_equal(layer.kernel.numpy(), ckpt[mlp + "kernel"])
  np.testing.assert_array_equal(layer.bias.numpy(), np.stack([ckpt[mlp + "bias"]] * 2))
  np.testing.assert_array_equal(layer.alpha.numpy(), alpha)


def test_no_vit_and_no_parameters_are_clear_errors():
  with pytest.raises(NpzImportError, match="no ViT backbone"):
    npz_import.import_npz(
      keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), _public_checkpoint("big_vision")
    )
  with pytest.raises(NpzImportError, match="Found no ViT parameters"):
    npz_import.import_npz(_vit(), {"foo/kernel": np.zeros(2)})


def test_spectral_norm_wrapped_layers_load_their_inner_weights():
  net = _network(method=Method(heads.Linear(), [modifiers.SpectralNorm(norm_bound=6.0)]))
  ckpt = _public_checkpoint("vit_npz")
  npz_import.import_npz(net, ckpt)
  query = net.get_layer("vit").get_layer("block1_attn_query_sn").layer
  np.testing.assert_array_equal(
    query.kernel.numpy(),
    ckpt["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"].reshape(D, D),
  )


def test_keep_head_needs_a_linear_head():
  with pytest.raises(NpzImportError, match="keep_head=True needs a network"):
    npz_import.import_npz(_vit(), _public_checkpoint("big_vision"), keep_head=True)
