"""The trained network of a workdir, rebuilt from the parsed gin config and its newest
checkpoint (model weights only): what the post-hoc stage and deep ensembles start from.
"""

from __future__ import annotations

import logging

from keras_unc import config
from keras_unc.data import get_source
from keras_unc.methods import resolve_method
from keras_unc.runtime import checkpoints, distribute
from keras_unc.training import averaging, feature_cache
from keras_unc.training.network import build_network

log = logging.getLogger(__name__)


def configured_method():
  """The method `train.method` binds (a registered name or a `Method`), default
  deterministic.
  """
  method = config.query("train.method")
  return resolve_method(method)


def restore_network(workdir, checkpoint=None):
  """`(network, method, checkpoint info)` of the newest checkpoint of `workdir` (or of `checkpoint`,
  a checkpoint folder), built by the parsed gin config as `train` builds it.

  The network is the full one (raw images -> output dict), also for runs trained on a
  feature cache, whose checkpoints hold the head alone. The info is `{"path", "step",
  "sha256"}` (the hash is of the checkpoint's variables).
  """
  distribute.set_precision()
  method = configured_method()
  source = get_source(config.value("train.dataset"))
  path = checkpoints.resolve(checkpoint or workdir)
  arrays, meta = checkpoints.read(path)
  checkpoints.check_method(meta, method.name, path, adapt_allowed=False)
  with distribute.get_strategy().scope():
    if getattr(source, "manifest", None) is not None:  # `cached:DIR`: head-only checkpoints.
      network = feature_cache.build_cached_network(method, source)
      checkpoints.assign(network.head_network.variables, arrays, "model", path)
    else:
      network = build_network(method, source.num_classes, source.image_shape)
      checkpoints.assign(network.variables, arrays, "model", path)
  log.info("Restored %s from %s", network.name, path)
  return network, method, feature_cache.checkpoint_info(path)


def served_network(network):
  """What the trainer evaluated and exported of `network` (`restore_network`'s): for SWA,
  EMA and SWAG runs the averaged network or the stack of SWAG samples, with BatchNorm
  statistics recomputed on the training split of the parsed config as the trainer does it
  (same split, order and batch size, so the same statistics); else `network` itself.
  Without this the `calibrate` and `ensemble` verbs would fit and export the raw last
  iterate of such a run, not the model its training evaluated.
  """
  if averaging.of(network) is None:
    return network
  data = {key: config.value(f"train.{key}") for key in ("split", "preprocess", "batch_size")}
  data["source"] = get_source(config.value("train.dataset"))
  return averaging.serving_network(network, data)
