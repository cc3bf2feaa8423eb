"""The trained network of a workdir, rebuilt from the parsed gin config and its newest
checkpoint (model weights only): what the post-hoc stage and deep ensembles start from.
"""

from __future__ import annotations

import logging

from keras_unc import config
from keras_unc.data import get_source
from keras_unc.methods import Deterministic, get_method
from keras_unc.runtime import checkpoints, distribute
from keras_unc.training import feature_cache
from keras_unc.training.network import build_network

log = logging.getLogger(__name__)


def configured_method():
  """The method `train.method` binds (a registered name or a `Method`), default
  deterministic.
  """
  method = config.query("train.method")
  return get_method(method) if isinstance(method, str) else (method or Deterministic())


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
