"""Import (and export) ViT `.npz` checkpoints of big_vision, vision_transformer and Plex.

Public checkpoints are flat `.npz` files whose keys are flax parameter paths joined by "/".
Three naming schemes are read and written (`format`):

* `"big_vision"` (`big_vision/models/vit.py`): `embedding/{kernel,bias}`, `pos_embedding`
  `[1, gh*gw, D]` (added to the patches *before* the class token is prepended, so it has no
  class-token row), `cls`, `Transformer/encoderblock_{i}/LayerNorm_0`,
  `MultiHeadDotProductAttention_0/{query,key,value,out}`, `LayerNorm_1`,
  `MlpBlock_0/Dense_{0,1}`, `Transformer/encoder_norm`, `pre_logits` (with `rep_size`),
  `head`.
* `"vit_npz"` (google-research `vision_transformer`, original and AugReg checkpoints):
  `Transformer/posembed_input/pos_embedding` `[1, 1 + gh*gw, D]` (added *after* the class
  token, so it covers it), blocks `LayerNorm_0`, `MultiHeadDotProductAttention_1`,
  `LayerNorm_2`, `MlpBlock_3`, and in the original ImageNet-21k checkpoints a `pre_logits`
  layer (tanh representation), loaded into a ViT built with `rep_size` and otherwise
  dropped, as vision_transformer does when fine-tuning.
* `"plex"` (uncertainty-baselines `vit_batchensemble.py`): the `vit_npz` names, with edward2
  `DenseBatchEnsemble` MLPs (`kernel [D_in, D_out]`, `fast_weight_alpha [M, D_in]`,
  `fast_weight_gamma [M, D_out]`, `bias [M, D_out]`) in the BatchEnsemble blocks and a
  `batchensemble_head`. Member i owns batch rows `[i*B, (i+1)*B)` there as here.

Layouts: flax attention kernels are `[D, heads, head_dim]` (query/key/value, biases
`[heads, head_dim]`) and `[heads, head_dim, D]` (out); ours are the same matrices as
`[D, D]`, head-major, so the conversion is a reshape. Keys may carry a prefix (`params/`,
`params/img/`, `opt/target/`: found automatically), and big_vision's scanned layout
(`Transformer/encoderblock/...` with a leading depth axis) is unstacked.

A position embedding for another grid is resampled bilinearly (`resample_posemb`, as
big_vision's `resample_posemb`: `scipy.ndimage.zoom(order=1)`, corners aligned), the class
token row kept. Every parameter of the model must be found and every checkpoint parameter
used, otherwise `NpzImportError` lists what was expected and what was found.

All three sources are flax models, whose `nn.gelu` is the tanh approximation: the import
switches the ViT's GELU layers to it (`gelu="auto"`), so the imported model reproduces its
source to float tolerance (the exact GELU differs by up to ~5e-4 per unit).

Example:
```python
from keras_unc.backbones import vit
from keras_unc.backbones.pretrained.npz_import import import_npz

backbone = vit("S/16", image_size=384)  # a 224px checkpoint: posemb resized 14x14 -> 24x24
report = import_npz(backbone, "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz")
```
"""

import fnmatch
import logging
import math
import re

import keras
import numpy as np

from keras_unc.layers.batch_ensemble import DenseBatchEnsemble

log = logging.getLogger(__name__)

FORMATS = ("big_vision", "vit_npz", "plex")

# Sub-module names inside one encoder block.
_BLOCK = {
  "big_vision": dict(
    ln_1="LayerNorm_0", attn="MultiHeadDotProductAttention_0", ln_2="LayerNorm_1", mlp="MlpBlock_0"
  ),
  "vit_npz": dict(
    ln_1="LayerNorm_0", attn="MultiHeadDotProductAttention_1", ln_2="LayerNorm_2", mlp="MlpBlock_3"
  ),
}
_BLOCK["plex"] = _BLOCK["vit_npz"]
_POSEMB = {
  "big_vision": "pos_embedding",
  "vit_npz": "Transformer/posembed_input/pos_embedding",
  "plex": "Transformer/posembed_input/pos_embedding",
}
_HEAD = {"big_vision": "head", "vit_npz": "head", "plex": "batchensemble_head"}
_BE_NAMES = {
  "kernel": "kernel",
  "alpha": "fast_weight_alpha",
  "gamma": "fast_weight_gamma",
  "bias": "bias",
}


class NpzImportError(ValueError):
  """A public checkpoint does not fit the model (names or shapes)."""


def resample_posemb(posemb, new_grid, num_prefix_tokens=0, old_grid=None):
  """Resizes a position-embedding grid bilinearly; prefix (class token) rows are kept.

  Same as big_vision's `resample_posemb` (and the Plex loader): the grid of the
  `[1, prefix + gh*gw, D]` table is resampled with linear interpolation, the output's corner
  positions landing on the input's corners (`scipy.ndimage.zoom(order=1)`).

  Args:
    posemb: array `[1, num_prefix_tokens + rows * cols, D]`.
    new_grid: int or (rows, cols) of the output grid.
    num_prefix_tokens: leading rows that are not on the grid (1 for a class token).
    old_grid: (rows, cols) of the input grid; None for a square one.

  Returns:
    float32 array `[1, num_prefix_tokens + new_rows * new_cols, D]`.

  Example:
  >>> resample_posemb(np.zeros([1, 1 + 14 * 14, 384]), 24, num_prefix_tokens=1).shape
  (1, 577, 384)
  """
  posemb = np.asarray(posemb)
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  if old_grid is None:
    side = math.isqrt(len(grid))
    if side * side != len(grid):
      raise NpzImportError(
        f"The position embedding has {len(grid)} grid positions (after {num_prefix_tokens} "
        "prefix tokens), not a square number: pass old_grid=(rows, cols)."
      )
    old_grid = (side, side)
  new_grid = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
  if tuple(old_grid) == new_grid:
    return posemb.astype("float32")
  log.info("Resampling the position embedding grid %s -> %s", old_grid, new_grid)
  table = grid.reshape(*old_grid, -1).astype("float64")
  for axis, size in enumerate(new_grid):
    table = _linear_resize(table, size, axis)
  table = table.reshape(1, new_grid[0] * new_grid[1], -1)
  return np.concatenate([prefix.astype("float64"), table], axis=1).astype("float32")


def _linear_resize(x, size, axis):
  # Output index j samples input coordinate j * (n - 1) / (size - 1) (corners aligned).
  n = x.shape[axis]
  coords = np.zeros(size) if size == 1 or n == 1 else np.arange(size) * (n - 1) / (size - 1)
  low = np.clip(np.floor(coords).astype(int), 0, n - 1)
  high = np.minimum(low + 1, n - 1)
  frac = (coords - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
  return np.take(x, low, axis) * (1 - frac) + np.take(x, high, axis) * frac


class _Param:
  """One checkpoint parameter: its public name, our variable and the two conversions."""

  def __init__(self, public, variable, to_ours=None, to_public=None):
    self.public, self.variable = public, variable
    shape = tuple(variable.shape)
    self.to_ours = to_ours or (lambda a: np.reshape(a, shape))
    self.to_public = to_public or (lambda a: a)

  @property
  def public_shape(self):
    return tuple(self.to_public(np.zeros(self.variable.shape, "float32")).shape)


def _inner(layer):
  # Wrappers (spectral normalisation) hold the weights in `layer.layer`.
  return layer.layer if isinstance(layer, keras.layers.Wrapper) else layer


def find_backbone(model, marker):
  """The (possibly nested) functional model that has a layer named `marker`."""
  names = {layer.name for layer in model.layers}
  if marker in names or f"{marker}_sn" in names:
    return model
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      found = find_backbone(layer, marker)
      if found is not None:
        return found
  return None


def get_layer(model, name):
  """`model.get_layer(name)`, looking through a spectral-norm wrapper `<name>_sn`."""
  names = {layer.name for layer in model.layers}
  if name in names:
    return _inner(model.get_layer(name))
  if f"{name}_sn" in names:
    return _inner(model.get_layer(f"{name}_sn"))
  return None


def _dense_params(prefix, layer, kind, heads=None):
  """Params of a Dense / DenseBatchEnsemble; `kind` 'qkv' / 'out' reshapes attention."""
  if isinstance(layer, DenseBatchEnsemble):
    if kind != "mlp":
      raise NpzImportError(
        f"{layer.name}: BatchEnsemble attention projections have no "
        "public checkpoint layout (Plex puts BatchEnsemble in the MLP)."
      )
    return [
      _Param(f"{prefix}/{public}", getattr(layer, ours))
      for ours, public in _BE_NAMES.items()
      if getattr(layer, ours) is not None
    ]
  if not isinstance(layer, keras.layers.Dense):
    raise NpzImportError(
      f"{layer.name} is a {type(layer).__name__}; only Dense and "
      "DenseBatchEnsemble layers have a public .npz layout."
    )
  d_in, d_out = layer.kernel.shape
  k_shape, b_shape = None, None
  if kind == "qkv":
    k_shape, b_shape = (d_in, heads, d_out // heads), (heads, d_out // heads)
  elif kind == "out":
    k_shape = (heads, d_in // heads, d_out)
  params = [
    _Param(
      f"{prefix}/kernel",
      layer.kernel,
      to_public=None if k_shape is None else (lambda a, s=k_shape: a.reshape(s)),
    )
  ]
  if layer.bias is not None:
    params.append(
      _Param(
        f"{prefix}/bias",
        layer.bias,
        to_public=None if b_shape is None else (lambda a, s=b_shape: a.reshape(s)),
      )
    )
  return params


def _norm_params(prefix, layer):
  return [_Param(f"{prefix}/scale", layer.gamma), _Param(f"{prefix}/bias", layer.beta)]


def _grid(backbone):
  tokens = backbone.get_layer("tokens").output.shape[1]
  conv = get_layer(backbone, "patch_embedding")
  ph, pw = conv.kernel_size
  h, w = backbone.input.shape[1:3]
  if h is None or w is None or (h // ph) * (w // pw) != tokens:
    side = math.isqrt(tokens)
    return (side, tokens // side)
  return (h // ph, w // pw)


def vit_params(model, format="big_vision", head=True):
  """The public parameters of our ViT (`keras_unc.backbones.vit`) in a naming scheme.

  Args:
    model: our ViT backbone, or a network (`build_network`) containing one.
    format: one of `FORMATS`.
    head: include the network's linear `head` layer (Dense or DenseBatchEnsemble) if any.

  Returns:
    (list of `_Param`, info dict with `grid`, `token`, `learned_posemb`, `depth`).
  """
  if format not in FORMATS:
    raise NpzImportError(f"Unknown format {format!r}: choose one of {FORMATS}.")
  backbone = find_backbone(model, "patch_embedding")
  if backbone is None:
    raise NpzImportError(
      f"{model.name} has no ViT backbone (no 'patch_embedding' layer): "
      "ViT .npz checkpoints load into keras_unc.backbones.vit models."
    )
  names = {layer.name for layer in backbone.layers}
  depth = len({m.group(1) for m in map(re.compile(r"block(\d+)_ln_1$").match, names) if m})
  token = "class_token" in names
  posemb_layer = backbone.get_layer("posemb")
  learned = bool(posemb_layer.trainable_weights)
  blk = _BLOCK[format]
  conv = get_layer(backbone, "patch_embedding")
  if not isinstance(conv, keras.layers.Conv2D):
    raise NpzImportError(
      f"The patch embedding is a {type(conv).__name__}; the public "
      "layout has a plain convolution there."
    )
  params = [_Param("embedding/kernel", conv.kernel), _Param("embedding/bias", conv.bias)]
  if token:
    params.append(_Param("cls", backbone.get_layer("class_token").token))
  if learned:
    params.append(_Param(_POSEMB[format], posemb_layer.embedding))  # Converted by the caller.
  for i in range(depth):
    p = f"Transformer/encoderblock_{i}"
    heads = backbone.get_layer(f"block{i}_attn").num_heads
    params += _norm_params(f"{p}/{blk['ln_1']}", get_layer(backbone, f"block{i}_ln_1"))
    for ours, public in (("query", "query"), ("key", "key"), ("value", "value"), ("out", "out")):
      params += _dense_params(
        f"{p}/{blk['attn']}/{public}",
        get_layer(backbone, f"block{i}_attn_{ours}"),
        "out" if ours == "out" else "qkv",
        heads,
      )
    params += _norm_params(f"{p}/{blk['ln_2']}", get_layer(backbone, f"block{i}_ln_2"))
    for j in (1, 2):
      params += _dense_params(
        f"{p}/{blk['mlp']}/Dense_{j - 1}", get_layer(backbone, f"block{i}_mlp_dense_{j}"), "mlp"
      )
  params += _norm_params("Transformer/encoder_norm", get_layer(backbone, "encoder_norm"))
  pre_logits = get_layer(backbone, "pre_logits")
  if pre_logits is not None:  # `vit(rep_size=...)`: big_vision's tanh representation layer.
    params += _dense_params("pre_logits", pre_logits, "mlp")
  head_layer = get_layer(model, "head") if head and model is not backbone else None
  if isinstance(head_layer, (keras.layers.Dense, DenseBatchEnsemble)):
    public = _HEAD[format] if isinstance(head_layer, DenseBatchEnsemble) else "head"
    params += _dense_params(public, head_layer, "mlp")
  info = dict(
    grid=_grid(backbone), token=token, learned_posemb=learned, depth=depth, head=head_layer
  )
  return params, info


GELU_FORMS = ("auto", "tanh", "exact", "keep")


def set_gelu(model, form):
  """Sets every ViT MLP GELU (`vit.GELU` layers) of `model` to `form` ("tanh" / "exact";
  "keep" changes nothing); returns the form the layers now have ("mixed" if they differ).
  """
  from keras_unc.backbones.vit import GELU  # Here: vit imports nothing of this module.

  gelus = []
  stack = [model]
  while stack:
    for layer in stack.pop().layers:
      if isinstance(layer, keras.Model):
        stack.append(layer)
      elif isinstance(layer, GELU):
        gelus.append(layer)
  if form != "keep":
    for layer in gelus:
      layer.approximate = form == "tanh"
  forms = {"tanh" if layer.approximate else "exact" for layer in gelus}
  return forms.pop() if len(forms) == 1 else ("mixed" if forms else "none")


def read_npz(path, prefix=None):
  """Reads a public `.npz` into `{name: array}` with the parameter prefix removed.

  The prefix (`""`, `params/`, `params/img/`, `opt/target/`, ...) is the one under which
  `embedding/kernel` and `Transformer/encoder_norm/scale` both exist; keys outside it
  (optimizer state, other towers) are left out. A scanned encoder
  (`Transformer/encoderblock/<name>` with a leading depth axis) is unstacked into
  `Transformer/encoderblock_{i}/<name>`.

  Args:
    path: the `.npz` file, or an already loaded `{name: array}` mapping.
    prefix: the prefix to use instead of finding it.
  """
  if isinstance(path, dict):
    arrays = dict(path)
  else:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  if prefix is None:
    candidates = [k[: -len("embedding/kernel")] for k in arrays if k.endswith("embedding/kernel")]
    candidates = [
      p
      for p in candidates
      if (not p or p.endswith("/")) and f"{p}Transformer/encoder_norm/scale" in arrays
    ]
    if not candidates:
      raise NpzImportError(
        "Found no ViT parameters (a key '<prefix>embedding/kernel' next to "
        "'<prefix>Transformer/encoder_norm/scale') in the checkpoint; keys start with: "
        f"{sorted(arrays)[:10]}"
      )
    prefix = min(candidates, key=len)
  arrays = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
  scanned = "Transformer/encoderblock/"
  for key in [k for k in arrays if k.startswith(scanned)]:
    stacked = arrays.pop(key)
    for i, value in enumerate(stacked):
      arrays[f"Transformer/encoderblock_{i}/{key[len(scanned) :]}"] = value
  if "Transformer/pos_embedding" in arrays:  # big_vision's pre-2022 location.
    arrays["pos_embedding"] = arrays.pop("Transformer/pos_embedding")
  return arrays


def detect_format(arrays):
  """The format of `arrays`: "plex" if any BatchEnsemble fast weight, "vit_npz" for
  vision_transformer names, else "big_vision".
  """
  if any(k.endswith("fast_weight_alpha") for k in arrays):
    return "plex"
  if "Transformer/posembed_input/pos_embedding" in arrays or any(
    "/MlpBlock_3/" in k for k in arrays
  ):
    return "vit_npz"
  return "big_vision"


def _posemb_to_ours(value, info, resize, prefix):
  """Public posemb `[1, prefix + N, D]` -> (ours, resized): ours has a class-token row iff
  the model has a class token (zero when the checkpoint has none, as in big_vision).
  """
  rows, cols = info["grid"]
  n = value.shape[1] - prefix
  if n != rows * cols and not resize:
    raise NpzImportError(
      f"The checkpoint's position embedding has {n} grid positions, the model "
      f"{rows}x{cols}={rows * cols}: pass resize_posemb=True (bilinear resampling) or "
      "build the model at the checkpoint's image size."
    )
  grid = resample_posemb(value, (rows, cols), prefix)[:, prefix:]
  resized = n != rows * cols
  if info["token"]:
    first = value[:, :1] if prefix else np.zeros_like(grid[:, :1])
    return np.concatenate([first, grid], axis=1), resized
  # A class-token row without a class token (the user ignored "cls"): nothing to add it to.
  return grid, resized


def mismatch_lines(missing, unexpected):
  """The lines of an import error that list the names on each side (shared by importers)."""
  lines = []
  if missing:
    lines.append(
      f"Expected by the model but not in the checkpoint ({len(missing)}): "
      + ", ".join(sorted(missing))
    )
  if unexpected:
    lines.append(
      f"In the checkpoint but not expected by the model ({len(unexpected)}): "
      + ", ".join(sorted(unexpected))
    )
  return lines


def _match(params, arrays, ignore, keep_head, head_names, adapt):
  """Checks the names; returns ({public: array} to load, skipped keys, fresh weights)."""
  expected = {p.public for p in params}
  dropped = {k for k in arrays if any(fnmatch.fnmatchcase(k, pat) for pat in ignore)}
  model_pre_logits = any(p.public.startswith("pre_logits/") for p in params)
  pre_logits = set()
  if not model_pre_logits:
    pre_logits = {k for k in arrays if k.startswith("pre_logits/")}
  if pre_logits and keep_head:
    raise NpzImportError(
      "The checkpoint has a pre_logits (representation) layer, which this ViT does not "
      "have: its head only fits on top of it. Build the ViT with rep_size=<the checkpoint's "
      f"pre_logits width, {arrays['pre_logits/kernel'].shape[-1]}> to load it, or use "
      "keep_head=False (head re-initialised and pre_logits dropped, as vision_transformer "
      "does)."
      if "pre_logits/kernel" in arrays
      else "The checkpoint has pre_logits parameters the model cannot take."
    )
  if not keep_head:
    dropped |= {k for k in arrays if k.split("/")[0] in head_names}
  dropped |= pre_logits
  found = set(arrays) - dropped
  missing, unexpected = expected - found, found - expected
  fresh = []
  if adapt:  # Deterministic checkpoint -> BatchEnsemble layer: fresh fast weights.
    for p in params:
      if p.public in missing and p.public.endswith(("fast_weight_alpha", "fast_weight_gamma")):
        missing.discard(p.public)
        fresh.append(p.public)
  if missing or unexpected:
    lines = ["The checkpoint does not fit the model.", *mismatch_lines(missing, unexpected)]
    lines.append(
      "Check the format (big_vision / vit_npz / plex), the ViT size (depth, "
      "pooling, posemb, rep_size for pre_logits, BatchEnsemble blocks) and keep_head; "
      "checkpoint keys can be skipped with ignore=('pattern*',)."
    )
    raise NpzImportError("\n".join(lines))
  return {k: arrays[k] for k in found}, sorted(dropped), fresh


def import_npz(
  model,
  path,
  format="auto",
  *,
  keep_head=False,
  resize_posemb=True,
  ignore=(),
  adapt=False,
  prefix=None,
  gelu="auto",
):
  """Loads a public ViT `.npz` checkpoint into our ViT (backbone or full network).

  Args:
    model: our ViT backbone, or a network from `build_network` (its `head` layer is loaded
      when `keep_head`).
    path: the `.npz` file (or a `{name: array}` dict).
    format: "auto" (`detect_format`), "big_vision", "vit_npz" or "plex".
    keep_head: load the checkpoint's head (same number of classes, linear head) instead of
      keeping the model's freshly initialised one.
    resize_posemb: resample a position embedding of another grid size (bilinear, class
      token kept); False makes a grid mismatch an error.
    ignore: fnmatch patterns of checkpoint keys to skip (e.g. `("cls",)`).
    adapt: allow a deterministic checkpoint in BatchEnsemble layers: kernel copied, bias
      broadcast to every member, fast weights keep their fresh initialisation.
    prefix: key prefix, found automatically when None (see `read_npz`).
    gelu: the GELU form the model's MLPs get: "auto" (the source's: "tanh" for these
      flax checkpoints), "tanh", "exact" (e.g. timm weights translated to `vit_npz` names,
      `torch_import`) or "keep" (leave the model's `gelu_approximate` as built).

  Returns:
    dict report: `format`, `loaded` (count), `skipped` (checkpoint keys not used: head,
    pre_logits, ignored), `fresh` (model weights not loaded), `posemb_resized`, `gelu`
    (the form the model now uses).

  Raises:
    NpzImportError: names or shapes do not fit; the message lists expected vs found.
  """
  if gelu not in GELU_FORMS:
    raise NpzImportError(f"Unknown gelu {gelu!r}: choose one of {GELU_FORMS}.")
  arrays = read_npz(path, prefix)
  if format == "auto":
    format = detect_format(arrays)
  params, info = vit_params(model, format, head=keep_head)
  if keep_head and info["head"] is None:
    raise NpzImportError(
      "keep_head=True needs a network whose output layer is a linear "
      "'head' (Dense or DenseBatchEnsemble); this model has none."
    )
  chosen, skipped, fresh = _match(
    params, arrays, tuple(ignore), keep_head, {"head", "batchensemble_head"}, adapt
  )
  fresh_names = set(fresh)
  values, bad, resized = [], [], False
  for p in params:
    if p.public in fresh_names:
      continue
    value = np.asarray(chosen[p.public], dtype="float32")
    if p.public == _POSEMB[format]:
      if value.ndim != 3 or value.shape[-1] != p.variable.shape[-1]:
        bad.append(f"{p.public}: checkpoint {value.shape}, model {tuple(p.variable.shape)}")
        continue
      if format == "big_vision":  # Old big_vision checkpoints had a combined cls row.
        prefix = int(math.isqrt(value.shape[1]) ** 2 + 1 == value.shape[1])
      else:
        prefix = int("cls" in arrays)
      converted, resized = _posemb_to_ours(value, info, resize_posemb, prefix)
      values.append((p, converted))
      continue
    target = p.public_shape
    if (
      adapt
      and value.shape != target
      and p.public.endswith("/bias")
      and len(target) == 2
      and value.shape == target[1:]
    ):
      value = np.broadcast_to(value, target)  # One bias for every member.
      fresh.append(f"{p.public} (broadcast to {target[0]} members)")
    if value.shape != target:
      bad.append(f"{p.public}: checkpoint {value.shape}, model {target}")
      continue
    values.append((p, p.to_ours(value)))
  if bad:
    raise NpzImportError(
      "Parameter shapes differ between the checkpoint and the model "
      "(ViT size, patch size, ensemble size or number of classes?):\n  " + "\n  ".join(bad)
    )
  for p, value in values:
    p.variable.assign(value.astype(p.variable.dtype))
  gelu = set_gelu(model, "tanh" if gelu == "auto" else gelu)
  if format == "big_vision" and info["token"] and info["learned_posemb"]:
    log.info(
      "big_vision adds the position embedding before the class token: the model's "
      "class-token position row is set to zero."
    )
  report = dict(
    format=format,
    loaded=len(values),
    skipped=skipped,
    fresh=fresh,
    posemb_resized=resized,
    gelu=gelu,
  )
  log.info("Imported %s (%s): %s", path if isinstance(path, str) else "arrays", format, report)
  return report


def export_npz(model, path=None, format="big_vision", head=True):
  """Writes our ViT's weights under the public names of `format` (inverse of `import_npz`).

  In the big_vision layout the class token's position row is folded into `cls`
  (big_vision adds no position embedding to the class token), so a round trip gives the
  same outputs, with that row zero.

  Args:
    model: our ViT backbone or a network containing one.
    path: `.npz` file to write, or None to only return the arrays.
    format: one of `FORMATS`.
    head: include the network's linear head.

  Returns:
    `{public name: float32 array}`.
  """
  params, info = vit_params(model, format, head=head)
  arrays = {
    p.public: np.asarray(p.to_public(keras.ops.convert_to_numpy(p.variable)), "float32")
    for p in params
  }
  if info["token"] and info["learned_posemb"] and format == "big_vision":
    posemb = arrays[_POSEMB[format]]
    arrays["cls"] = arrays["cls"] + posemb[:, :1]
    arrays[_POSEMB[format]] = posemb[:, 1:]
  if path is not None:
    np.savez(path, **arrays)
  return arrays
