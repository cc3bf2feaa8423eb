"""Input data for keras_unc: sources, string-registered preprocessing ops, pipelines.

Images stay uint8 in their raw value range unless an op converts them: the
models resize and normalise raw images themselves, so the usual MNIST training
string is "" or augmentation only ("flip_lr"); `value_range` exists for users
who normalise in the pipeline.

    source = get_source("mnist")               # offline: launch/fetch_data.sh
    ds = make_dataset(source, "train[:50000]", "flip_lr", 128, train=True)
"""

from keras_unc.data import (
  cached,  # noqa: F401  (registers the `cached:` prefix)
  outliers,  # noqa: F401  (registers the `outliers:` prefix)
  toy,  # noqa: F401  (registers the `toy:` prefix)
)
from keras_unc.data.ops import Preprocess, parse_ops, register, registered_ops
from keras_unc.data.pipeline import make_dataset
from keras_unc.data.sources import (
  Source,
  default_data_dir,
  get_source,
  parse_split,
  register_prefix,
)

__all__ = [
  "Preprocess",
  "Source",
  "get_source",
  "make_dataset",
  "parse_ops",
  "default_data_dir",
  "parse_split",
  "register",
  "register_prefix",
  "registered_ops",
]
