"""CAT: one backbone that concatenates the embeddings of N pretrained networks (RRL).

Zhang & Bottou, "Learning useful representations for shifting tasks and distributions",
ICML 2023: N networks pretrained with different seeds (or widths) are concatenated
(`CAT_N`) and then linear-probed or fine-tuned; *two-stage* fine-tuning fine-tunes each
network alone, then trains a linear head on the concatenation initialised from the
members' heads, concatenated and divided by N (RRL `cat_weights`), so that the initial
logits are the mean of the members' logits.

In gin, `cat_backbone` is a backbone like `@vit` or `@resnet`, so the trainer, the
checkpoints and the SavedModel export see one ordinary network:

```
build_network.backbone = @cat_backbone
cat_backbone.members = [@member0/vit, @member1/vit]          # scoped: each its own sizes
cat_backbone.checkpoints = ['/runs/seed0', '/runs/seed1']      # workdirs, ckpt folders, .npz
Deterministic.head_init = @member_head_kernel()               # two-stage only
Deterministic.head_bias_init = @member_head_bias()
member_head_kernel.checkpoints = ['/runs/seed0_ft', '/runs/seed1_ft']
```
"""

import gin
import keras
import numpy as np

from keras_unc.backbones.pretrained import init_from, npz_import, torch_import, torch_reader
from keras_unc.runtime import checkpoints as ckpt_lib


def _skippable(path):
  # Random-number generator states are not weights: a fresh one is as good as any.
  return "seed_generator" in path


def stored_by_key(path):
  """`{(layer, weight): array}` of a checkpoint's model variables, with the paths; a key
  that occurs twice (e.g. a checkpoint of a CAT network) maps to None (ambiguous).
  """
  arrays, meta = ckpt_lib.read(ckpt_lib.resolve(path))
  stored = {}
  for i, (var_path, _) in enumerate(meta.get("variables", [])):
    if _skippable(var_path):
      continue
    key = ckpt_lib.weight_key(var_path)
    stored[key] = None if key in stored else arrays[f"model/{i:05d}"]
  return stored


def load_backbone_weights(backbone, path):
  """Copies a member's backbone weights from a checkpoint of a network that contained it.

  Matching is by (layer, weight) name; every backbone weight must be found with its
  shape (a missing or mismatched one raises `CheckpointMismatchError` listing them), the
  checkpoint's other weights (its head) are ignored. A `.npz` path is imported with
  `keras_unc.backbones.pretrained.npz_import.import_npz` (big_vision / vision_transformer names),
  a PyTorch file (`.pth`, `.pth.tar`, `.safetensors`, ...: RRL's and SwAV's ResNets, timm
  ViTs) with `keras_unc.backbones.pretrained.torch_import.import_torch`.
  """
  if str(path).endswith(".npz"):
    return npz_import.import_npz(backbone, path)
  if str(path).endswith(init_from.TORCH_SUFFIXES):
    return torch_import.import_torch(backbone, path)
  stored = stored_by_key(path)
  problems, pairs = [], []
  for var in backbone.variables:
    if _skippable(var.path):
      continue
    key = ckpt_lib.weight_key(var.path)
    value = stored.get(key, "missing")
    if value is None:
      problems.append(f"{var.path} (ambiguous: several {key} in the checkpoint)")
    elif isinstance(value, str):
      problems.append(f"{var.path} (missing)")
    elif tuple(value.shape) != tuple(var.shape):
      problems.append(f"{var.path} (shape {tuple(var.shape)} vs {tuple(value.shape)} stored)")
    else:
      pairs.append((var, value))
  if problems:
    raise ckpt_lib.CheckpointMismatchError(
      f"Checkpoint {path} does not hold the weights of backbone {backbone.name!r}: "
      f"{'; '.join(problems[:10])}{' ...' if len(problems) > 10 else ''}. Use the "
      "checkpoint of a network with this backbone (same variant, width, image size)."
    )
  for var, value in pairs:
    var.assign(value)
  return f"{len(pairs)} backbone variables loaded from {path}"


@gin.configurable
def cat_backbone(
  *, image_size, num_channels=3, members=gin.REQUIRED, checkpoints=None, name="cat", **overrides
):
  """A backbone whose embedding concatenates those of N member backbones (`CAT_N`).

  Args:
    image_size, num_channels: passed to every member (the trainer supplies them).
    members: backbone constructors (gin: `[@m0/vit, @m1/resnet, ...]`, scoped so widths
      and sizes can differ), each called like `build_network` calls a backbone.
    checkpoints: None, or one path per member (None entries allowed): a checkpoint
      folder or workdir of a network with that backbone, a public `.npz`, or a PyTorch
      checkpoint (`.pth`, `.pth.tar`, `.safetensors`: torchvision / RRL / SwAV ResNets,
      timm ViTs); its
      backbone weights are copied into the member when the network is built (a resumed
      run then restores its own checkpoint over them).
    name: model name.
    **overrides: the method's backbone overrides (layer factories, tiling), given to
      every member.

  Returns:
    A `keras.Model` `[B, H, W, C] -> [B, sum_i D_i]`; member i is the nested model
    `member{i}`, its features at columns `[sum_{j<i} D_j, sum_{j<=i} D_j)`.
  """
  members = list(members)
  if not members:
    raise ValueError(
      "cat_backbone.members is empty: list the member backbones, e.g. [@member0/vit, @member1/vit]."
    )
  if checkpoints is not None and len(checkpoints) != len(members):
    raise ValueError(
      f"cat_backbone: {len(members)} members but {len(checkpoints)} "
      "checkpoints: give one path (or None) per member."
    )
  size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  images = keras.Input((*size, num_channels), name="images")
  features = []
  for i, member in enumerate(members):
    net = member(image_size=image_size, num_channels=num_channels, name=f"member{i}", **overrides)
    if checkpoints is not None and checkpoints[i]:
      load_backbone_weights(net, checkpoints[i])
    features.append(net(images))
  out = (
    keras.layers.Concatenate(name="cat_embedding")(features) if len(features) > 1 else features[0]
  )
  return keras.Model(images, out, name=name)


@keras.saving.register_keras_serializable(package="keras_unc")
class MemberHeads(keras.initializers.Initializer):
  """Initialises a linear head on a CAT embedding from the members' linear heads.

  Kernel: the members' `head/kernel` `[D_i, C]` stacked along the input axis and divided
  by N; bias: the mean of the members' `head/bias`. The CAT head's initial logits are then
  the mean of the members' logits (RRL `cat_weights`).

  Args:
    checkpoints: one checkpoint folder or workdir per member, in `cat_backbone` order, or
      PyTorch checkpoints (their `fc` / `head` classifier).
    part: "kernel" or "bias".
    layer: name of the members' head layer.
  """

  def __init__(self, checkpoints, part="kernel", layer="head"):
    if part not in ("kernel", "bias"):
      raise ValueError(f"MemberHeads: part must be 'kernel' or 'bias', got {part!r}.")
    self.checkpoints, self.part, self.layer = list(checkpoints), part, layer

  def values(self):
    found = []
    for path in self.checkpoints:
      value = _torch_head(path, self.part) if str(path).endswith(init_from.TORCH_SUFFIXES) else None
      value = value if value is not None else stored_by_key(path).get((self.layer, self.part))
      if value is None:
        raise ckpt_lib.CheckpointMismatchError(
          f"Checkpoint {path} has no single linear {self.layer}/{self.part}: two-stage "
          "heads are initialised from deterministic (linear-head) members."
        )
      found.append(np.asarray(value, np.float32))
    n = len(found)
    if self.part == "kernel":
      return np.concatenate(found, axis=0) / n
    return np.mean(found, axis=0)

  def __call__(self, shape, dtype=None):
    value = self.values()
    if tuple(value.shape) != tuple(shape):
      raise ValueError(
        f"MemberHeads: the members' heads give a {self.part} of shape "
        f"{value.shape} but the CAT head needs {tuple(shape)}: list the same "
        "members (in the same order) as cat_backbone."
      )
    return keras.ops.convert_to_tensor(value, dtype=dtype or "float32")

  def get_config(self):
    return {"checkpoints": self.checkpoints, "part": self.part, "layer": self.layer}


def _torch_head(path, part):
  """The linear classifier of a PyTorch checkpoint (`fc` of a ResNet, `head` of a timm ViT)
  in our layout: kernel `[D, C]`, bias `[C]`; None when it has none.
  """
  state = torch_reader.read_state_dict(path)
  for name in ("fc", "head", "model.fc", "model.head"):
    if f"{name}.weight" in state:
      return state[f"{name}.weight"].T if part == "kernel" else state[f"{name}.bias"]
  return None


@gin.configurable
def member_head_kernel(checkpoints=gin.REQUIRED, layer="head"):
  """`MemberHeads(checkpoints, "kernel")` for `Deterministic.head_init` (two-stage)."""
  return MemberHeads(checkpoints, "kernel", layer)


@gin.configurable
def member_head_bias(checkpoints=gin.REQUIRED, layer="head"):
  """`MemberHeads(checkpoints, "bias")` for `Deterministic.head_bias_init` (two-stage)."""
  return MemberHeads(checkpoints, "bias", layer)
