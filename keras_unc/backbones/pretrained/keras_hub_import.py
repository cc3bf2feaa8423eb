"""Import keras-hub `ViTBackbone` / `ResNetBackbone` presets (`save_to_preset` folders).

A keras-hub preset folder (`config.json`, `model.weights.h5`, `metadata.json`) is loaded
with `keras_hub.models.Backbone.from_preset` (offline for a local folder) and its weights
are copied onto our backbone (`keras_unc.backbones.vit` / `resnet`), or onto the backbone
inside a network from `build_network`. With the same weights both compute the same
features (keras-hub's ViT returns the token sequence: ours is its class token, or its mean
with `pooling="gap"`; keras-hub's ResNet returns the last feature map: ours is its mean).

keras-hub's `MultiHeadAttention` kernels are `[D, heads, head_dim]` (query/key/value) and
`[heads, head_dim, D]` (output), ours the same matrices as `[D, D]`; its position embedding
is an `Embedding` table `[T, D]` covering the class token, ours `[1, T, D]` (resampled
bilinearly when the grid differs, as `npz_import.resample_posemb`). ResNet layers map by
name: `conv1_{conv,bn}` -> `stem_*`, `stack{s}_block{b}_{k}_{conv,bn}` (0-based s, b;
k = 0 the shortcut) -> `stage{s+1}_block{b+1}_{conv,bn}{k}` / `..._shortcut_{conv,bn}`.

Example:
```python
from keras_unc.backbones import resnet
from keras_unc.backbones.pretrained.keras_hub_import import import_keras_hub

backbone = resnet(50)
import_keras_hub(backbone, "/path/to/resnet_50_imagenet")  # a downloaded preset folder
```
"""

import logging

import keras
import numpy as np

from keras_unc.backbones.pretrained.npz_import import (
  find_backbone,
  get_layer,
  resample_posemb,
  set_gelu,
)
from keras_unc.backbones.vit import LAYER_NORM_EPSILON
from keras_unc.layers.batch_ensemble import Conv2DBatchEnsemble, DenseBatchEnsemble

log = logging.getLogger(__name__)


class KerasHubImportError(ValueError):
  """A keras-hub preset does not fit the model."""


def load_backbone(preset):
  """`keras_hub.models.Backbone.from_preset(preset)`, with a clear error without keras-hub."""
  try:
    import keras_hub
  except ImportError as e:
    raise ImportError(
      "Importing keras-hub presets needs the keras-hub package: "
      "pip install keras-hub (or the '[test]' extras)."
    ) from e
  if isinstance(preset, keras.Model):
    return preset
  return keras_hub.models.Backbone.from_preset(preset)


def _np(weight):
  return np.asarray(keras.ops.convert_to_numpy(weight), "float32")


class _Copier:
  """Collects (our variable, value) pairs, checking shapes, then assigns them all."""

  def __init__(self, adapt):
    self.adapt, self.pairs, self.bad, self.fresh = adapt, [], [], []

  def add(self, variable, value, name):
    value = np.asarray(value, "float32")
    if tuple(variable.shape) != value.shape:
      if value.size == np.prod(variable.shape) and value.ndim != len(variable.shape):
        value = value.reshape(variable.shape)  # Attention [D, H, Dh] <-> [D, D].
      else:
        self.bad.append(f"{name}: preset {value.shape}, model {tuple(variable.shape)}")
        return
    self.pairs.append((variable, value))

  def layer(self, ours, weights, name):
    """Copies keras-hub `weights` (kernel[, bias] or BN's four) onto our layer."""
    if ours is None:
      self.bad.append(f"{name}: no such layer in the model")
      return
    if isinstance(ours, (DenseBatchEnsemble, Conv2DBatchEnsemble)):
      if not self.adapt:
        self.bad.append(
          f"{name}: the model's layer is BatchEnsemble (pass adapt=True to copy "
          "the shared kernel and keep fresh fast weights)"
        )
        return
      self.add(ours.kernel, weights[0], f"{name} -> {ours.name}/kernel")
      if ours.bias is not None and len(weights) > 1:
        self.add(
          ours.bias, np.broadcast_to(weights[1], ours.bias.shape), f"{name} -> {ours.name}/bias"
        )
      self.fresh += [ours.alpha.path, ours.gamma.path]
      return
    if len(weights) != len(ours.weights):
      self.bad.append(
        f"{name}: preset has {len(weights)} weights, model layer {ours.name} "
        f"{len(ours.weights)} (bias or no bias?)"
      )
      return
    for variable, value in zip(ours.weights, weights):
      self.add(variable, value, f"{name} -> {ours.name}/{variable.name}")

  def commit(self, source):
    if self.bad:
      shown = self.bad[:20] + ([f"... and {len(self.bad) - 20} more"] if len(self.bad) > 20 else [])
      raise KerasHubImportError(
        f"The keras-hub preset {source} does not fit the model "
        f"({len(self.bad)} differences):\n  " + "\n  ".join(shown)
      )
    for variable, value in self.pairs:
      variable.assign(value)
    return dict(loaded=len(self.pairs), fresh=self.fresh)


def _import_vit(hub, backbone, copier, resize_posemb):
  config = hub.get_config()
  set_gelu(backbone, "exact")  # keras-hub's ViT MLP uses Keras' exact "gelu".
  if abs(config.get("layer_norm_epsilon", 1e-6) - LAYER_NORM_EPSILON) > 1e-12:
    raise KerasHubImportError(
      f"The preset's LayerNorm epsilon is {config['layer_norm_epsilon']}; our ViT uses "
      f"{LAYER_NORM_EPSILON} (original ViT), so the features would differ."
    )
  token = "class_token" in {layer.name for layer in backbone.layers}
  if bool(config.get("use_class_token", True)) != token:
    raise KerasHubImportError(
      f"The preset {'has' if config.get('use_class_token', True) else 'has no'} class token "
      f"but the model {'has' if token else 'has not'}: build the ViT with "
      f"pooling={'token' if config.get('use_class_token', True) else 'gap'!r}."
    )
  posemb = backbone.get_layer("posemb")
  if not posemb.trainable_weights:
    raise KerasHubImportError(
      "keras-hub's ViT has a learned position embedding: build ours with posemb='learn'."
    )
  embed = hub.get_layer("vit_patching_and_embedding")
  encoder = hub.get_layer("vit_encoder")
  copier.layer(
    get_layer(backbone, "patch_embedding"),
    [_np(w) for w in embed.patch_embedding.weights],
    "patch_embedding",
  )
  if token:
    copier.add(backbone.get_layer("class_token").token, _np(embed.class_token), "class_token")
  table = _np(embed.position_embedding.embeddings)[None]
  if table.shape != tuple(posemb.embedding.shape) and resize_posemb:
    rows = backbone.input.shape[1] // get_layer(backbone, "patch_embedding").kernel_size[0]
    cols = backbone.get_layer("tokens").output.shape[1] // rows
    table = resample_posemb(table, (rows, cols), int(token))
  copier.add(posemb.embedding, table, "position_embedding")
  blocks = encoder.encoder_layers
  depth = len([layer for layer in backbone.layers if layer.name.endswith("_ln_1")])
  if len(blocks) != depth:
    raise KerasHubImportError(f"The preset has {len(blocks)} encoder blocks, the model {depth}.")
  for i, block in enumerate(blocks):
    mha = block.mha
    parts = [
      ("ln_1", block.layer_norm_1),
      ("attn_query", mha._query_dense),
      ("attn_key", mha._key_dense),
      ("attn_value", mha._value_dense),
      ("attn_out", mha._output_dense),
      ("ln_2", block.layer_norm_2),
      ("mlp_dense_1", block.mlp.dense_1),
      ("mlp_dense_2", block.mlp.dense_2),
    ]
    for ours, layer in parts:
      copier.layer(
        get_layer(backbone, f"block{i}_{ours}"),
        [_np(w) for w in layer.weights],
        f"transformer_block_{i + 1}/{layer.name}",
      )
  copier.layer(
    get_layer(backbone, "encoder_norm"),
    [_np(w) for w in encoder.layer_norm.weights],
    "encoder_norm",
  )


def _resnet_name(name):
  """keras-hub ResNet layer name -> ours (None if it has no counterpart)."""
  if name in ("conv1_conv", "conv1_bn"):
    return "stem_" + name.split("_")[1]
  parts = name.split("_")
  if len(parts) != 4 or not parts[0].startswith("stack") or not parts[1].startswith("block"):
    return None
  stack, block, index, kind = parts
  prefix = f"stage{int(stack[5:]) + 1}_block{int(block[5:]) + 1}"
  return f"{prefix}_shortcut_{kind}" if index == "0" else f"{prefix}_{kind}{index}"


def _import_resnet(hub, backbone, copier):
  config = hub.get_config()
  problems = []
  if config.get("use_pre_activation"):
    problems.append("use_pre_activation=True (ResNet v2)")
  if config.get("block_type") not in ("basic_block", "bottleneck_block"):
    problems.append(
      f"block_type={config.get('block_type')!r} (only basic_block and "
      "bottleneck_block are ResNet v1.5)"
    )
  if len(config.get("input_conv_filters", [64])) != 1:
    problems.append("several input convolutions (ResNet-vd stem)")
  if problems:
    raise KerasHubImportError(
      "The preset's ResNet has no counterpart in ours: " + "; ".join(problems) + "."
    )
  expected = {
    layer.name[:-3] if layer.name.endswith("_sn") else layer.name
    for layer in backbone.layers
    if layer.weights
  }
  used = set()
  for layer in hub.layers:
    if not layer.weights:
      continue
    ours_name = _resnet_name(layer.name)
    ours = None if ours_name is None else get_layer(backbone, ours_name)
    if ours is None:
      copier.bad.append(f"{layer.name}: no counterpart in the model (expected {ours_name})")
      continue
    if isinstance(layer, keras.layers.BatchNormalization):
      if abs(layer.epsilon - ours.epsilon) > 1e-12:
        copier.bad.append(f"{layer.name}: BN epsilon {layer.epsilon}, model {ours.epsilon}")
    elif tuple(layer.strides) != tuple(getattr(ours, "strides", layer.strides)):
      copier.bad.append(f"{layer.name}: strides {layer.strides}, model {ours.strides}")
    copier.layer(ours, [_np(w) for w in layer.weights], layer.name)
    used.add(ours_name)
  for name in sorted(expected - used):
    copier.bad.append(f"{name}: in the model but not in the preset")


def import_keras_hub(model, preset, *, adapt=False, resize_posemb=True):
  """Copies a keras-hub ViT or ResNet backbone preset onto our backbone.

  Args:
    model: our ViT / ResNet backbone or a network (`build_network`) containing one. The
      network's head keeps its initialisation (backbone presets have no head).
    preset: a preset folder written by `save_to_preset`, a Kaggle handle if keras-hub can
      reach it, or a keras-hub `Backbone` instance.
    adapt: our BatchEnsemble layers take the shared kernel, fresh fast weights.
    resize_posemb: resample a ViT position embedding of another grid size.

  Returns:
    dict report: `kind` ("vit" / "resnet"), `loaded` (count), `fresh` (not loaded).

  Raises:
    KerasHubImportError: the architectures differ; the message lists each difference.
  """
  hub = load_backbone(preset)
  kind = type(hub).__name__
  copier = _Copier(adapt)
  if kind == "ViTBackbone":
    backbone = find_backbone(model, "patch_embedding")
    if backbone is None:
      raise KerasHubImportError(f"A keras-hub ViT preset needs our ViT; {model.name} has none.")
    _import_vit(hub, backbone, copier, resize_posemb)
    name = "vit"
  elif kind == "ResNetBackbone":
    backbone = find_backbone(model, "stem_conv")
    if backbone is None:
      raise KerasHubImportError(
        f"A keras-hub ResNet preset needs our ResNet; {model.name} has none."
      )
    _import_resnet(hub, backbone, copier)
    name = "resnet"
  else:
    raise KerasHubImportError(
      f"keras-hub {kind} presets are not supported: use a ViTBackbone or ResNetBackbone preset."
    )
  report = dict(kind=name, **copier.commit(preset if isinstance(preset, str) else kind))
  log.info("Imported keras-hub %s: %s", kind, report)
  return report
