"""Layer-wise fine-tuning options: a frozen prefix and learning-rate multipliers.

`finetune` in gin is the ordinary trainer with these two knobs:

* `build_network.freeze = <regex>`: backbone layers whose name matches are not trainable
  (no update, no weight decay, BatchNorm in inference mode). `frozen_prefix(blocks=K)`
  writes the regex of "the stem and the first K blocks" of a ViT or a ResNet.
* `make_optimizer.lr_multipliers = {<regex>: <multiplier>, ...}`: the learning rate of a
  variable whose path matches (`re.search`, first match in order wins, else 1) is
  multiplied. Keras 3 optimizers have one learning rate for all variables, so
  `with_lr_multipliers` subclasses the optimizer and scales the learning rate passed to
  `update_step` per variable (and the decoupled weight decay with it, as a per-parameter
  learning rate does in PyTorch param groups). A multiplier 0 leaves the variable unchanged.

Example (gin):

```
build_network.freeze = @frozen_prefix()
frozen_prefix.blocks = 4                      # stem/patch embedding + blocks 0..3
make_optimizer.lr_multipliers = {'^head/': 10.0, '^block(1[01])_': 0.5}
```
"""

import re

import gin
import keras
from keras import ops

PREFIX_LAYERS = {
  # Layers before the first block: ViT patch embedding / tokens, ResNet stem.
  "vit": ("patch_embedding", "tokens", "class_token", "posemb"),
  "resnet": ("stem_",),
}


@gin.configurable
def frozen_prefix(blocks=0, backbone="vit", stages=None):
  """Regex matching the stem and the first `blocks` blocks (or `stages` ResNet stages).

  Args:
    blocks: ViT only: freeze the patch embedding, position embedding and encoder blocks
      `0 .. blocks - 1`.
    backbone: "vit" or "resnet" (which names the stem layers have).
    stages: ResNet only: freeze the stem and stages `1 .. stages`.

  Returns:
    A regex for `build_network.freeze` (`re.match` on layer names).
  """
  if backbone not in PREFIX_LAYERS:
    raise ValueError(
      f"frozen_prefix: unknown backbone {backbone!r}: choose one of {sorted(PREFIX_LAYERS)}."
    )
  parts = [re.escape(p) for p in PREFIX_LAYERS[backbone]]
  if backbone == "vit":
    if stages is not None:
      raise ValueError("frozen_prefix: `stages` is for ResNets; a ViT has `blocks`.")
    parts += [f"block{i}_" for i in range(int(blocks))]
  else:
    if blocks:
      raise ValueError("frozen_prefix: for a ResNet freeze whole stages (`stages=K`).")
    parts += [f"stage{s}_" for s in range(1, int(stages or 0) + 1)]
  return "^(" + "|".join(parts) + ")"


def _nested_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):  # e.g. the members of a CAT backbone
      yield from _nested_layers(layer)


def freeze_layers(model, pattern):
  """Sets `trainable = False` on every layer of `model` (nested models included) whose
  name matches `pattern` (`re.match`); returns the frozen layer names.

  Raises ValueError when the pattern matches no layer that has weights (a typo would
  otherwise silently fine-tune everything).
  """
  regex = re.compile(pattern)
  frozen = []
  for layer in _nested_layers(model):
    if regex.match(layer.name) and layer.weights:
      layer.trainable = False
      frozen.append(layer.name)
  if not frozen:
    names = sorted({layer.name for layer in _nested_layers(model) if layer.weights})
    raise ValueError(
      f"build_network.freeze={pattern!r} matches no layer with weights of "
      f"{model.name!r}; its layers are: {', '.join(names[:40])}"
      f"{' ...' if len(names) > 40 else ''}."
    )
  return frozen


def multiplier_for(path, multipliers):
  """The multiplier of the first pattern in `multipliers` found in `path` (else 1.0)."""
  for pattern, value in multipliers:
    if re.search(pattern, path):
      return float(value)
  return 1.0


class LrMultipliers:
  """Mixin over a Keras optimizer class: per-variable learning-rate multipliers.

  The optimizer's update of a variable with multiplier `m` uses learning rate `m * lr`
  (momentum, Adam moments etc. as usual); its decoupled weight decay, which Keras scales
  by the learning rate, is scaled by `m` too. `m = 0` skips the variable entirely.
  """

  lr_multipliers = ()

  def build(self, var_list):
    super().build(var_list)
    paths = [getattr(v, "path", v.name) for v in var_list]
    self._multipliers = [multiplier_for(p, self.lr_multipliers) for p in paths]

  def _multiplier(self, variable):
    return self._multipliers[self._get_variable_index(variable)]

  def _use_weight_decay(self, variable):
    if self._multiplier(variable) != 1.0:
      return False  # Decayed in `update_step`, with its multiplier.
    return super()._use_weight_decay(variable)

  def update_step(self, gradient, variable, learning_rate):
    m = self._multiplier(variable)
    if m == 1.0:
      return super().update_step(gradient, variable, learning_rate)
    if m == 0.0:
      return None
    lr = ops.cast(learning_rate, variable.dtype) * m
    if self.weight_decay and super()._use_weight_decay(variable):
      variable.assign(variable - variable * ops.cast(self.weight_decay, variable.dtype) * lr)
    return super().update_step(gradient, variable, lr)

  def get_config(self):
    return {**super().get_config(), "lr_multipliers": [list(p) for p in self.lr_multipliers]}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    pairs = config.pop("lr_multipliers", ())
    optimizer = super().from_config(config, custom_objects=custom_objects)
    optimizer.lr_multipliers = tuple((str(p), float(m)) for p, m in pairs)
    return optimizer


_CLASSES = {}


def with_lr_multipliers(optimizer, multipliers):
  """A copy of `optimizer` (same config) whose learning rate is scaled per variable.

  Args:
    optimizer: an unbuilt Keras optimizer.
    multipliers: `{regex: multiplier}` (or pairs), searched in variable paths in order.

  Returns:
    An instance of a subclass of `type(optimizer)` with `LrMultipliers` mixed in.
  """
  pairs = tuple((str(p), float(m)) for p, m in dict(multipliers).items())
  for pattern, m in pairs:
    re.compile(pattern)
    if m < 0:
      raise ValueError(f"lr_multipliers[{pattern!r}] = {m}: multipliers must be >= 0.")
  base = type(optimizer)
  if base not in _CLASSES:
    _CLASSES[base] = type(f"LrMultiplier{base.__name__}", (LrMultipliers, base), {})
  new = _CLASSES[base].from_config(optimizer.get_config())
  new.lr_multipliers = pairs
  return new
