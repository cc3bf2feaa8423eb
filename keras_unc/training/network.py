"""Composes input adapter + backbone (with the method's overrides) + the method's head.

`build_network` returns a plain functional `keras.Model` whose outputs follow the output
convention (`logits`, `probs`, `uncertainty`, `embedding`); it is what gets exported.
`keras_unc.training.train_model.TrainModel` wraps it for `fit`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import gin
import keras

from keras_unc.layers import InputAdapter
from keras_unc.training import weight_average

if TYPE_CHECKING:
  from keras_unc.methods import Method


@gin.configurable
def build_network(
  method: Method,
  num_classes: int,
  input_shape: Sequence[int],
  *,
  backbone: Callable[..., keras.Model] = gin.REQUIRED,
  image_size: int | tuple[int, int] = gin.REQUIRED,
  num_channels: int = 3,
  value_range: tuple[float, float] = (-1.0, 1.0),
  freeze_backbone: bool = False,
  separate_head: bool = False,
  freeze: str | None = None,
) -> keras.Model:
  """Builds the functional network `raw images -> output dict`.

  Args:
    method: a `keras_unc.methods.Method`.
    num_classes: number of classes of the head.
    input_shape: (H, W, C) of the raw images as stored in the dataset.
    backbone: backbone constructor (gin: `@vit` or `@resnet`), called with
      `image_size`, `num_channels` and the method's overrides; returns `[B, D]`.
    image_size: the backbone's input size; raw images are resized inside the model.
    num_channels: the backbone's input channels (gray images are repeated to 3).
    value_range: pixel range the backbone sees.
    freeze_backbone: keep the backbone's weights fixed (not trainable, so no weight decay
      either) and run its BatchNorm in inference mode: linear probes and uncertainty
      modules on a pretrained representation.
    separate_head: build the head as its own model `network.head_network` (input: the
      embedding `[B, D]`) nested in the network, so it can train alone on cached
      embeddings (`python -m keras_unc cache`) and share its weights with the full network.
    freeze: regex (`re.match` on layer names, nested models included) of backbone layers
      kept fixed while the rest fine-tunes, e.g. `@frozen_prefix()` (stem + first K
      blocks); see `keras_unc.training.layerwise`.
  """
  images = keras.Input(tuple(input_shape), name="images")
  x = InputAdapter(image_size, num_channels, value_range, name="input_adapter")(images)
  x = method.backbone_input(x)  # MIMO: the members' images stacked on the channels.
  net = backbone(image_size=image_size, num_channels=x.shape[-1], **method.backbone_overrides())
  if freeze_backbone:
    net.trainable = False
  elif freeze:
    from keras_unc.training.layerwise import freeze_layers

    freeze_layers(net, freeze)
  features = net(x, training=False) if freeze_backbone else net(x)
  if separate_head:  # Built here so initialisation draws the same random numbers as below.
    embedding = keras.Input(tuple(features.shape[1:]), name="embedding")
    head = keras.Model(
      embedding, method.build_head(embedding, num_classes), name=f"{method.name}_head"
    )
    head.method_name = method.name
    outputs = head(features)
  else:
    outputs = method.build_head(features, num_classes)
  network = keras.Model(images, outputs, name=f"{method.name}_{net.name}")
  network.method_name = method.name  # Recorded in checkpoints (a method mismatch is refused).
  network.backbone = net
  if separate_head:
    network.head_network = head
    network.features = features  # The backbone output in this graph (what a cache stores).
  # SWA/EMA/SWAG: checkpointed averaging state (`network.weight_average`); copies for serving.
  kwargs = dict(backbone=backbone, image_size=image_size, num_channels=num_channels)
  kwargs.update(value_range=value_range, freeze_backbone=freeze_backbone, freeze=freeze)
  kwargs.update(separate_head=separate_head)
  weight_average.attach(
    method, network, lambda: build_network(method, num_classes, input_shape, **kwargs)
  )
  return network
