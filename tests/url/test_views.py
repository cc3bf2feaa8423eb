"""`views` + `flatten_views`: two augmented views per image in consecutive rows (URL --ssl)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_unc.data import get_source, make_dataset
from keras_unc.data.ops import parse_ops

SPEC = "views(2, ['inception_crop(8)', 'flip_lr'])|flatten_views"


def test_views_are_independent_augmentations_flattened_in_pairs():
  pre = parse_ops(SPEC)
  image = tf.cast(tf.reshape(tf.range(64), [8, 8, 1]) * 3, tf.uint8)
  ex = pre.example_fn(
    {"image": image, "label": tf.constant(3), "_rng": tf.constant([0, 1], tf.int64)}
  )
  assert ex["image"].shape == (2, 8, 8, 1)
  assert not np.allclose(ex["image"][0], ex["image"][1])  # Each view has its own seeds.
  batch = {
    "image": tf.stack([ex["image"], ex["image"] + 1.0]),
    "label": tf.constant([3, 5]),
    "_rng": tf.constant([[0, 1], [0, 2]], tf.int64),
  }
  out = pre.batch_fn(batch)
  np.testing.assert_array_equal(out["label"], [3, 3, 5, 5])
  np.testing.assert_allclose(out["image"][1], ex["image"][1])  # Row 2k+1: view 2 of image k.
  np.testing.assert_allclose(out["image"][2], ex["image"][0] + 1.0)


def test_training_pipeline_yields_twice_the_rows():
  images, labels = next(iter(make_dataset(get_source("digits"), "train", SPEC, 6, train=True)))
  assert images.shape == (12, 8, 8, 1)
  np.testing.assert_array_equal(labels[0::2], labels[1::2])


def test_bad_views_specs():
  with pytest.raises(ValueError, match="num_views >= 1"):
    parse_ops("views(0, 'flip_lr')")
  with pytest.raises(ValueError, match="only per-example ops"):
    parse_ops("views(2, ['flip_lr', 'mixup'])")
  with pytest.raises(ValueError, match="put views"):
    parse_ops("flatten_views").batch_fn({"image": tf.zeros([2, 8, 8, 1]), "label": tf.zeros([2])})
