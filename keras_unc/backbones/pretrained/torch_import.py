"""Import PyTorch checkpoints (timm ViT, URL, torchvision / timm / SwAV ResNet) into our models.

The files are read by `torch_reader.read_state_dict` (no PyTorch needed, no code run). Formats
(`import_torch(..., format=...)`, also `import_weights.format`):

* `"timm_vit"`: timm `VisionTransformer` names (`vit_{tiny,small,base,large}_patch16_224.*`):
  `cls_token`, `pos_embed` `[1, 1 + N, D]` (with the class-token row, as vision_transformer),
  `patch_embed.proj`, `blocks.{i}.norm1`, `blocks.{i}.attn.qkv` (query, key and value fused
  along the output axis), `blocks.{i}.attn.proj`, `blocks.{i}.norm2`, `blocks.{i}.mlp.fc1/fc2`,
  `norm`, `head`. It is translated to the `vit_npz` layout and loaded by
  `npz_import.import_npz`, so the position embedding is resampled for another image size and
  missing or unknown names are listed the same way.
* `"url_vit"`: a checkpoint of mkirchhof/url's `UncertaintyViaNetwork(timm ViT)` (the
  Pretrained Visual Uncertainties models): the timm ViT under `model.`, the pred-net
  uncertainty module under `unc_module.unc_module.{0, 2, ..., 2 * depth}` (Linear layers,
  LeakyReLU / Softplus between them), loaded into our `PredNet` (`pred_net`). The reference's
  `unc_scaler` is a Python attribute, not in the checkpoint: our `UncertaintyRescale` keeps its
  own state (rank metrics such as R-AUROC do not depend on it).
* `"torchvision_resnet"`: torchvision's (and timm's) ResNet names: `conv1`, `bn1`,
  `layer{s}.{b}.conv{k}` / `.bn{k}`, `layer{s}.{b}.downsample.0/1`, `fc`. Our ResNet is the
  same v1.5 network (stride on the 3x3, BN epsilon 1e-5), so outputs reproduce.
* `"url_resnet"`: the URL wrapper around a timm ResNet (`model.` + pred-net).
* `"swav_resnet"`: SwAV / self-supervised ResNets: the torchvision names without `fc`; the
  `projection_head.*` and `prototypes.*` of the pretraining are skipped.

Torch layouts: Linear `[out, in]` -> Dense `[in, out]`; Conv2d `[out, in, kh, kw]` -> Conv2D
`[kh, kw, in, out]`; BatchNorm `weight, bias, running_mean, running_var` -> `gamma, beta,
moving_mean, moving_variance` (`num_batches_tracked` is dropped).

Example:
```python
from keras_unc.backbones import vit
from keras_unc.backbones.pretrained.torch_import import import_torch

backbone = vit("S/16")
import_torch(backbone, "vit_small_patch16_224.augreg_in21k.safetensors")  # format detected
```
"""

import fnmatch
import logging
import re

import keras
import numpy as np

from keras_unc.backbones.pretrained import npz_import, torch_reader
from keras_unc.backbones.pretrained.npz_import import find_backbone, get_layer

log = logging.getLogger(__name__)

FORMATS = ("timm_vit", "url_vit", "torchvision_resnet", "url_resnet", "swav_resnet")
URL_PREFIX = "model."
_PREDNET = re.compile(r"^unc_module\.unc_module\.(\d+)\.(weight|bias)$")


class TorchImportError(ValueError):
  """A PyTorch checkpoint does not fit the model (names or shapes)."""


def detect_format(state):
  """The naming scheme of a state dict (one of `FORMATS`)."""
  url = any(_PREDNET.match(k) for k in state)
  keys = {k[len(URL_PREFIX) :] if url and k.startswith(URL_PREFIX) else k for k in state}
  if "pos_embed" in keys or "patch_embed.proj.weight" in keys:
    return "url_vit" if url else "timm_vit"
  if "conv1.weight" in keys:
    if url:
      return "url_resnet"
    return "torchvision_resnet" if "fc.weight" in keys else "swav_resnet"
  raise TorchImportError(
    "Cannot tell the checkpoint's naming: no timm ViT (pos_embed, patch_embed.proj) nor "
    f"ResNet (conv1) parameters among {sorted(state)[:8]}...; pass format= one of {FORMATS}."
  )


# ---------------------------------------------------------------- ViT (timm <-> vit_npz)


def timm_vit_to_npz(state, num_heads):
  """Timm ViT names and torch layouts -> the `vit_npz` layout of `npz_import` (flax)."""
  out, used = {}, set()

  def take(key):
    used.add(key)
    return np.asarray(state[key], "float32")

  def linear(prefix, key, heads=None, kind="mlp"):
    w, b = take(f"{key}.weight"), take(f"{key}.bias")
    kernel = w.T  # [in, out]
    if kind == "qkv":
      kernel = kernel.reshape(kernel.shape[0], heads, -1)
      b = b.reshape(heads, -1)
    elif kind == "out":
      kernel = kernel.reshape(heads, -1, kernel.shape[-1])
    out[f"{prefix}/kernel"], out[f"{prefix}/bias"] = kernel, b

  def norm(prefix, key):
    out[f"{prefix}/scale"], out[f"{prefix}/bias"] = take(f"{key}.weight"), take(f"{key}.bias")

  if "patch_embed.proj.weight" in state:
    out["embedding/kernel"] = take("patch_embed.proj.weight").transpose(2, 3, 1, 0)
    out["embedding/bias"] = take("patch_embed.proj.bias")
  if "cls_token" in state:
    out["cls"] = take("cls_token")
  if "pos_embed" in state:
    out["Transformer/posembed_input/pos_embedding"] = take("pos_embed")
  depth = len({int(m.group(1)) for m in map(re.compile(r"blocks\.(\d+)\.").match, state) if m})
  for i in range(depth):
    p, t = f"Transformer/encoderblock_{i}", f"blocks.{i}"
    norm(f"{p}/LayerNorm_0", f"{t}.norm1")
    qkv_w, qkv_b = take(f"{t}.attn.qkv.weight"), take(f"{t}.attn.qkv.bias")
    for j, name in enumerate(("query", "key", "value")):
      d = qkv_w.shape[0] // 3
      kernel = qkv_w[j * d : (j + 1) * d].T.reshape(qkv_w.shape[1], num_heads, -1)
      out[f"{p}/MultiHeadDotProductAttention_1/{name}/kernel"] = kernel
      out[f"{p}/MultiHeadDotProductAttention_1/{name}/bias"] = qkv_b[j * d : (j + 1) * d].reshape(
        num_heads, -1
      )
    linear(f"{p}/MultiHeadDotProductAttention_1/out", f"{t}.attn.proj", num_heads, "out")
    norm(f"{p}/LayerNorm_2", f"{t}.norm2")
    linear(f"{p}/MlpBlock_3/Dense_0", f"{t}.mlp.fc1")
    linear(f"{p}/MlpBlock_3/Dense_1", f"{t}.mlp.fc2")
  if "norm.weight" in state:
    norm("Transformer/encoder_norm", "norm")
  if "head.weight" in state:
    linear("head", "head")
  # Names with no vit_npz counterpart pass through unchanged, so import_npz lists them.
  for key in set(state) - used:
    out[key] = np.asarray(state[key])
  return out


def npz_to_timm_vit(arrays):
  """The inverse of `timm_vit_to_npz`: `vit_npz` arrays -> a timm ViT state dict."""
  state = {}

  def linear(key, prefix):
    kernel = arrays[f"{prefix}/kernel"]
    state[f"{key}.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
    state[f"{key}.bias"] = arrays[f"{prefix}/bias"].reshape(-1)

  state["patch_embed.proj.weight"] = arrays["embedding/kernel"].transpose(3, 2, 0, 1)
  state["patch_embed.proj.bias"] = arrays["embedding/bias"]
  if "cls" in arrays:
    state["cls_token"] = arrays["cls"]
  if "Transformer/posembed_input/pos_embedding" in arrays:
    state["pos_embed"] = arrays["Transformer/posembed_input/pos_embedding"]
  depth = len({k.split("/")[1] for k in arrays if k.startswith("Transformer/encoderblock_")})
  for i in range(depth):
    p, t = f"Transformer/encoderblock_{i}", f"blocks.{i}"
    for ours, theirs in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
      state[f"{t}.{theirs}.weight"] = arrays[f"{p}/{ours}/scale"]
      state[f"{t}.{theirs}.bias"] = arrays[f"{p}/{ours}/bias"]
    att = f"{p}/MultiHeadDotProductAttention_1"
    kernels = [arrays[f"{att}/{n}/kernel"] for n in ("query", "key", "value")]
    state[f"{t}.attn.qkv.weight"] = np.concatenate(
      [k.reshape(k.shape[0], -1).T for k in kernels], axis=0
    )
    state[f"{t}.attn.qkv.bias"] = np.concatenate(
      [arrays[f"{att}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")]
    )
    out = arrays[f"{att}/out/kernel"]
    state[f"{t}.attn.proj.weight"] = out.reshape(-1, out.shape[-1]).T
    state[f"{t}.attn.proj.bias"] = arrays[f"{att}/out/bias"]
    linear(f"{t}.mlp.fc1", f"{p}/MlpBlock_3/Dense_0")
    linear(f"{t}.mlp.fc2", f"{p}/MlpBlock_3/Dense_1")
  state["norm.weight"] = arrays["Transformer/encoder_norm/scale"]
  state["norm.bias"] = arrays["Transformer/encoder_norm/bias"]
  if "head/kernel" in arrays:
    linear("head", "head")
  return {k: np.ascontiguousarray(v, "float32") for k, v in state.items()}


# ---------------------------------------------------------------- ResNet (torchvision names)


def _resnet_public(name):
  """Our ResNet layer name -> its torchvision module path (None: no counterpart)."""
  if name in ("stem_conv", "stem_bn"):
    return {"stem_conv": "conv1", "stem_bn": "bn1"}[name]
  m = re.match(r"^stage(\d+)_block(\d+)_(shortcut_conv|shortcut_bn|conv\d|bn\d)$", name)
  if not m:
    return None
  stage, block, kind = int(m.group(1)), int(m.group(2)) - 1, m.group(3)
  suffix = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}.get(kind, kind)
  return f"layer{stage}.{block}.{suffix}"


def _resnet_params(backbone):
  """[(public key, variable, to_ours, to_public)] of our ResNet's weighted layers."""
  params = []
  for layer in backbone.layers:
    inner = layer.layer if isinstance(layer, keras.layers.Wrapper) else layer
    base = layer.name[:-3] if layer.name.endswith("_sn") else layer.name
    public = _resnet_public(base)
    if not inner.weights:
      continue
    if public is None:
      raise TorchImportError(
        f"Layer {layer.name} of {backbone.name} has no torchvision counterpart: only plain "
        "ResNet v1.5 backbones (keras_unc.backbones.resnet) load torchvision checkpoints."
      )
    if isinstance(inner, keras.layers.BatchNormalization):
      for var, key in (
        (inner.gamma, "weight"),
        (inner.beta, "bias"),
        (inner.moving_mean, "running_mean"),
        (inner.moving_variance, "running_var"),
      ):
        if var is not None:
          params.append((f"{public}.{key}", var, None, None))
    elif isinstance(inner, keras.layers.Conv2D):
      params.append(
        (
          f"{public}.weight",
          inner.kernel,
          lambda a: a.transpose(2, 3, 1, 0),
          lambda a: a.transpose(3, 2, 0, 1),
        )
      )
      if inner.bias is not None:
        params.append((f"{public}.bias", inner.bias, None, None))
    else:
      raise TorchImportError(f"Unexpected {type(inner).__name__} {layer.name} in the ResNet.")
  return params


def _head_params(model, backbone):
  head = get_layer(model, "head") if model is not backbone else None
  if not isinstance(head, keras.layers.Dense):
    return []
  return [
    ("fc.weight", head.kernel, lambda a: a.T, lambda a: a.T),
    ("fc.bias", head.bias, None, None),
  ]


# ---------------------------------------------------------------- URL pred-net


def _prednet_params(model):
  prednet = get_layer(model, "pred_net")
  if prednet is None:
    raise TorchImportError(
      "The checkpoint has a URL pred-net uncertainty module (unc_module.*), but the model has "
      "no 'pred_net' layer: build it with train.method = @URL() and URL.module = 'pred_net' "
      "(URL.unc_width / unc_depth as in the checkpoint), or load only the backbone with "
      "ignore=('unc_module.*',)."
    )
  params = []
  for i, dense in enumerate([*prednet.hidden, prednet.out]):
    params.append(
      (f"unc_module.unc_module.{2 * i}.weight", dense.kernel, lambda a: a.T, lambda a: a.T)
    )
    params.append((f"unc_module.unc_module.{2 * i}.bias", dense.bias, None, None))
  return params


# ---------------------------------------------------------------- loading


def _assign(params, state, path):
  bad = []
  for key, var, to_ours, _ in params:
    value = np.asarray(state[key], "float32")
    value = to_ours(value) if to_ours else value
    if tuple(value.shape) != tuple(var.shape):
      bad.append(f"{key}: checkpoint {tuple(value.shape)}, model {tuple(var.shape)}")
  if bad:
    raise TorchImportError(
      f"Parameter shapes differ between {path} and the model (depth, width, number of "
      "classes or uncertainty-module width?):\n  " + "\n  ".join(bad)
    )
  for key, var, to_ours, _ in params:
    value = np.asarray(state[key], "float32")
    var.assign((to_ours(value) if to_ours else value).astype(var.dtype))


def _check_names(expected, state, format, path):
  missing, unexpected = expected - set(state), set(state) - expected
  if missing or unexpected:
    lines = [f"{path} ({format}) does not fit the model."]
    lines += npz_import.mismatch_lines(missing, unexpected)
    lines.append(
      f"Check the format (one of {FORMATS}), the architecture and keep_head; checkpoint keys "
      "can be skipped with ignore=('pattern*',)."
    )
    raise TorchImportError("\n".join(lines))


def import_torch(
  model, path, format="auto", *, keep_head=False, resize_posemb=True, ignore=(), adapt=False
):
  """Loads a PyTorch checkpoint (file or `{name: array}` dict) into our model.

  Args:
    model: our ViT or ResNet backbone, or a network from `build_network` (its `head` is loaded
      with `keep_head`; a URL network's `pred_net` from a URL checkpoint).
    path: `.safetensors` / `.pth` / `.pth.tar` / `.bin`, or a state dict of arrays.
    format: "auto" (`detect_format`) or one of `FORMATS`.
    keep_head: load the checkpoint's classifier (`head` / `fc`; same number of classes).
    resize_posemb: ViT: resample a position embedding of another grid size.
    ignore: fnmatch patterns of checkpoint keys to skip.
    adapt: ViT: deterministic weights into BatchEnsemble layers (see `import_npz`).

  Returns:
    dict report: `format`, `loaded` (count), `skipped` (checkpoint keys not used).

  Raises:
    TorchImportError: names or shapes do not fit (expected vs found listed).
    torch_reader.UnsafeCheckpointError: the file tries to run code.
  """
  state = dict(path) if isinstance(path, dict) else torch_reader.read_state_dict(path)
  where = path if isinstance(path, str) else "the state dict"
  if format == "auto":
    format = detect_format(state)
  if format not in FORMATS:
    raise TorchImportError(f"Unknown format {format!r}: choose one of {FORMATS}.")
  skipped = sorted(k for k in state if any(fnmatch.fnmatchcase(k, p) for p in ignore))
  skipped += sorted(k for k in state if k.endswith("num_batches_tracked"))
  if format == "swav_resnet":
    skipped += sorted(k for k in state if k.startswith(("projection_head.", "prototypes.")))
  state = {k: v for k, v in state.items() if k not in set(skipped)}
  extra = []
  if format.startswith("url_"):
    extra = _prednet_params(model)
    _check_names(
      {k for k, *_ in extra}, {k: v for k, v in state.items() if _PREDNET.match(k)}, format, where
    )
    body = {k[len(URL_PREFIX) :]: v for k, v in state.items() if k.startswith(URL_PREFIX)}
    stray = sorted(k for k in state if not k.startswith(URL_PREFIX) and not _PREDNET.match(k))
    if stray:
      raise TorchImportError(f"{where}: keys outside model.* and unc_module.*: {stray[:10]}")
  else:
    body = state
  if format in ("timm_vit", "url_vit"):
    backbone = find_backbone(model, "patch_embedding")
    if backbone is None:
      raise TorchImportError(f"{format} checkpoints load into keras_unc.backbones.vit models.")
    if not keep_head:
      skipped += [k for k in body if k.startswith("head.")]
      body = {k: v for k, v in body.items() if not k.startswith("head.")}
    heads = backbone.get_layer("block0_attn").num_heads
    try:
      report = npz_import.import_npz(
        model,
        timm_vit_to_npz(body, heads),
        "vit_npz",
        keep_head=keep_head,
        resize_posemb=resize_posemb,
        adapt=adapt,
        gelu="exact",  # timm's nn.GELU is the exact (erf) form.
      )
    except npz_import.NpzImportError as e:
      raise TorchImportError(f"{where} ({format}, translated to vit_npz names): {e}") from e
    loaded = report["loaded"]
  else:
    backbone = find_backbone(model, "stem_conv")
    if backbone is None:
      raise TorchImportError(
        f"{format} checkpoints load into keras_unc.backbones.resnet models (no 'stem_conv')."
      )
    params = _resnet_params(backbone)
    head = _head_params(model, backbone) if keep_head else []
    if keep_head and not head:
      raise TorchImportError("keep_head=True needs a network with a linear 'head' layer.")
    if not keep_head:
      skipped += [k for k in body if k.startswith("fc.")]
      body = {k: v for k, v in body.items() if not k.startswith("fc.")}
    _check_names({k for k, *_ in params + head}, body, format, where)
    _assign(params + head, body, where)
    loaded = len(params) + len(head)
  if extra:
    _assign(extra, state, where)
    loaded += len(extra)
  report = dict(format=format, loaded=loaded, skipped=sorted(set(skipped)))
  log.info("Imported %s (%s): %d weights, %d keys skipped.", where, format, loaded, len(skipped))
  return report


def export_torch(model, format="timm_vit", head=True):
  """Our weights under a PyTorch naming (the inverse of `import_torch`), as NumPy arrays:
  what tests and users need to hand a model to PyTorch code (save with `safetensors`).
  """
  if format in ("timm_vit", "url_vit"):
    state = npz_to_timm_vit(npz_import.export_npz(model, None, "vit_npz", head=head))
  elif format in ("torchvision_resnet", "url_resnet", "swav_resnet"):
    backbone = find_backbone(model, "stem_conv")
    params = _resnet_params(backbone)
    if head and format != "swav_resnet":
      params += _head_params(model, backbone)
    state = {}
    for key, var, _, to_public in params:
      value = keras.ops.convert_to_numpy(var).astype("float32")
      state[key] = np.ascontiguousarray(to_public(value) if to_public else value)
  else:
    raise TorchImportError(f"Unknown format {format!r}: choose one of {FORMATS}.")
  if format.startswith("url_"):
    state = {URL_PREFIX + k: v for k, v in state.items()}
    for key, var, _, to_public in _prednet_params(model):
      value = keras.ops.convert_to_numpy(var).astype("float32")
      state[key] = np.ascontiguousarray(to_public(value) if to_public else value)
  return state
