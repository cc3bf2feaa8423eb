"""A TFDS source whose label is a distribution or a set: the data layer yields int labels.

`keras_unc.data`'s TFDS source casts the label feature to one int64 class id. Soft
labels (CIFAR-10H `soft_label`, a float vector) and label sets (ImageNet ReaL
`real_label`, a variable-length list) need a fixed-size float label instead, so this
adapter reads them with TFDS directly and yields `label: float32 [C]`:

* `soft`: the feature is a `[C]` distribution, renormalised to sum to 1 (all-zero rows
  stay zero);
* `counts`: a sequence of class ids with repeats (CIFAR-10H `human_labels`), turned
  into vote frequencies;
* `set`: a sequence of valid class ids (ImageNet ReaL), turned into a multi-hot vector
  (an empty set gives a zero row).
"""

import dataclasses

import tensorflow as tf

from keras_unc.data.sources import TfdsSource, get_source

LABEL_KINDS = ("soft", "counts", "set")


@dataclasses.dataclass
class TfdsLabelSource(TfdsSource):
  """`TfdsSource` yielding `{"image", "label": float32 [C]}` from a soft or set feature."""

  label_kind: str = "soft"

  def load(self, split):
    import tensorflow_datasets as tfds

    self._check_split(split)
    decoders = {self.image_key: tfds.decode.SkipDecoding()} if self.skip_decoding else None
    try:
      ds = self.builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    except AssertionError as e:  # TFDS' "could not find data" error
      raise FileNotFoundError(
        f"TFDS dataset {self.builder.name!r} is not prepared in data_dir "
        f"{self.builder.data_dir!r}: prepare it offline (`tfds build "
        f"{self.builder.name} --data_dir=<dir>`) and point get_source.data_dir (or "
        "KERAS_UNC_DATA_DIR) at it."
      ) from e
    ik, lk, kind, n = self.image_key, self.label_key, self.label_kind, self.num_classes

    def select(ex):
      label = ex[lk]
      if kind == "soft":
        label = tf.cast(tf.reshape(label, [n]), tf.float32)
        total = tf.reduce_sum(label)
        label = tf.math.divide_no_nan(label, total)
      else:
        hot = tf.one_hot(tf.cast(tf.reshape(label, [-1]), tf.int32), n, dtype=tf.float32)
        if kind == "set":
          label = tf.reduce_max(tf.concat([hot, tf.zeros([1, n])], 0), axis=0)
        else:
          label = tf.math.divide_no_nan(
            tf.reduce_sum(hot, 0), tf.cast(tf.shape(hot)[0], tf.float32)
          )
      return {"image": ex[ik], "label": label}

    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def label_source(
  name, label_key, label_kind=None, *, image_key="image", data_dir=None, skip_decoding=False
):
  """A `TfdsLabelSource` for `tfds:<builder>` with the given soft/set label feature.

  `label_kind` defaults to `soft` for a tensor feature and `set` for a sequence;
  `data_dir` to `get_source`'s (gin: `get_source.data_dir`), like every other source.
  """
  if not name.startswith("tfds:"):
    raise ValueError(
      f"Soft-label and label-set data must be a TFDS dataset ('tfds:<builder>'), got {name!r}."
    )
  import tensorflow_datasets as tfds

  builder = get_source(name, data_dir, builder_only=True)
  feats = builder.info.features
  if label_key not in feats:
    raise ValueError(f"{name} has no feature {label_key!r}; features: {sorted(feats)}.")
  feat = feats[label_key]
  if isinstance(feat, tfds.features.Sequence):
    label_kind = label_kind or "set"
    num_classes = getattr(feat.feature, "num_classes", None)
  else:
    label_kind = label_kind or "soft"
    num_classes = feat.shape[-1] if feat.shape else None
  if label_kind not in LABEL_KINDS:
    raise ValueError(f"Unknown label_kind {label_kind!r}: choose one of {LABEL_KINDS}.")
  if label_kind == "soft" and isinstance(feat, tfds.features.Sequence):
    raise ValueError(
      f"{name} feature {label_key!r} is a sequence of class ids: use label_kind 'set' or 'counts'."
    )
  if label_kind != "soft" and not isinstance(feat, tfds.features.Sequence):
    raise ValueError(
      f"{name} feature {label_key!r} is not a sequence of class ids: use label_kind 'soft'."
    )
  if not num_classes:
    raise ValueError(f"Cannot tell the number of classes of {name} feature {label_key!r}.")
  return TfdsLabelSource(
    name=f"{name}:{label_key}",
    num_classes=int(num_classes),
    image_shape=tuple(feats[image_key].shape),
    builder=builder,
    image_key=image_key,
    label_key=label_key,
    skip_decoding=skip_decoding,
    label_kind=label_kind,
  )


__all__ = ["LABEL_KINDS", "TfdsLabelSource", "label_source"]
