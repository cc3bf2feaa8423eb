"""Tests for make_dataset: order, determinism, resume, sharding, eval passes."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_unc.data import get_source, make_dataset

AUG = "flip_lr|random_crop(6)"


def ctx(i, n=2):
  return tf.distribute.InputContext(
    num_input_pipelines=n, input_pipeline_id=i, num_replicas_in_sync=n
  )


def listify(ds):
  return [(np.asarray(x), np.asarray(y)) for x, y in ds.as_numpy_iterator()]


def assert_same(a, b):
  assert len(a) == len(b)
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)


@pytest.fixture(scope="module")
def digits():
  return get_source("digits")


def test_train_batches(digits):
  ds = make_dataset(digits, "train[:40]", "", 8, train=True)
  assert ds.element_spec[0].shape == (8, 8, 8, 1) and ds.element_spec[0].dtype == tf.uint8
  assert ds.element_spec[1].shape == (8,) and ds.element_spec[1].dtype == tf.int64
  x, y = digits.arrays("train[:40]")
  b = listify(ds.take(10))  # two epochs of 5 batches
  e1, e2 = (np.concatenate([y for _, y in b[i : i + 5]]) for i in (0, 5))
  # Each epoch is a permutation of the split, and epochs differ.
  assert sorted(e1) == sorted(e2) == sorted(y)
  assert sorted(np.concatenate([x for x, _ in b[:5]]).tobytes()) == sorted(x.tobytes())
  assert list(e1) != list(e2) and list(e1) != list(y)
  assert_same(b, listify(make_dataset(digits, "train[:40]", "", 8, train=True).take(10)))
  other = listify(make_dataset(digits, "train[:40]", "", 8, train=True, seed=1).take(1))
  assert not np.array_equal(other[0][1], b[0][1])


@pytest.mark.parametrize("start", [1, 5, 7])
def test_resume_in_memory(digits, start):
  # 40 examples, batch 8: steps 4..9 cross an epoch boundary (5 steps/epoch).
  make = lambda s: make_dataset(digits, "train[:37]", AUG, 8, train=True, start_step=s)
  assert_same(listify(make(start).take(4)), listify(make(0).skip(start).take(4)))


def test_resume_with_mixup(digits):
  spec = "flip_lr|onehot(10)|mixup"
  make = lambda s: make_dataset(digits, "train[:20]", spec, 4, train=True, start_step=s)
  a = listify(make(6).take(3))
  assert a[0][1].shape == (4, 10) and a[0][0].dtype == np.float32
  assert_same(a, listify(make(0).skip(6).take(3)))


def test_eval_one_ordered_pass(digits):
  b = listify(make_dataset(digits, "test", "", 100, train=False))
  assert [len(y) for _, y in b] == [100, 100, 97]
  x, y = digits.arrays("test")
  np.testing.assert_array_equal(np.concatenate([x for x, _ in b]), x)
  np.testing.assert_array_equal(np.concatenate([y for _, y in b]), y)
  assert len(listify(make_dataset(digits, "test", "", 100, train=False, drop_remainder=True))) == 2


def test_sharding_disjoint(digits):
  x, y = digits.arrays("train[:40]")
  # Global batch 8 over 2 replicas: 4 per replica; one epoch = 5 global steps.
  shards = [
    listify(make_dataset(digits, "train[:40]", "", 8, train=True, input_context=ctx(i)).take(5))
    for i in range(2)
  ]
  assert all(xb.shape == (4, 8, 8, 1) for s in shards for xb, _ in s)
  seen = [[im.tobytes() for xb, _ in s for im in xb] for s in shards]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(e.tobytes() for e in x)
  # Eval: disjoint, complete.
  ev = [
    listify(make_dataset(digits, "test", "", 64, train=False, input_context=ctx(i)))
    for i in range(2)
  ]
  assert sum(len(yb) for e in ev for _, yb in e) == 297
  # Resume per pipeline.
  make = lambda s: make_dataset(
    digits, "train[:40]", AUG, 8, train=True, input_context=ctx(1), start_step=s
  )
  assert_same(listify(make(3).take(4)), listify(make(0).skip(3).take(4)))


def test_batch_not_divisible(digits):
  with pytest.raises(ValueError, match=r"batch_size=9 .*2 replicas.*multiple of 2"):
    make_dataset(digits, "train", "", 9, train=True, input_context=ctx(0))


def test_bad_start_step(digits):
  with pytest.raises(ValueError, match="start_step"):
    make_dataset(digits, "test", "", 8, train=False, start_step=3)


def test_mnist(data_dir):
  mnist = get_source("mnist", data_dir)
  # 1000 / 128 = 7.8: batch 7 straddles the first epoch boundary.
  make = lambda s: make_dataset(mnist, "train[:1000]", "flip_lr", 128, train=True, start_step=s)
  a = listify(make(7).take(2))
  assert a[0][0].shape == (128, 28, 28, 1)
  assert_same(a, listify(make(0).skip(7).take(2)))
  x, y = mnist.arrays("test")
  first = listify(make_dataset(mnist, "test", "", 256, train=False).take(1))[0]
  np.testing.assert_array_equal(first[0], x[:256])
  np.testing.assert_array_equal(first[1], y[:256])


def test_tfds_mocked():
  with tfds.testing.mock_data(num_examples=13):
    src = get_source("tfds:mnist")
    make = lambda s, **kw: make_dataset(
      src, "train", AUG, 4, train=True, start_step=s, shuffle_buffer=8, **kw
    )
    a = listify(make(0).take(8))
    assert a[0][0].shape == (4, 6, 6, 1)
    assert_same(listify(make(2).take(6)), a[2:])  # 13 examples: crosses epochs
    assert_same(
      listify(make(3, input_context=ctx(0)).take(3)),
      listify(make(0, input_context=ctx(0)).skip(3).take(3)),
    )
    ev = [
      listify(make_dataset(src, "test", "", 4, train=False, input_context=ctx(i))) for i in range(2)
    ]
    imgs = [[im.tobytes() for xb, _ in e for im in xb] for e in ev]
    assert (len(imgs[0]), len(imgs[1])) == (7, 6) and not set(imgs[0]) & set(imgs[1])


def test_keras_fit_smoke(digits):
  import keras

  ds = make_dataset(digits, "train", "flip_lr", 32, train=True)
  model = keras.Sequential(
    [
      keras.Input((8, 8, 1)),
      keras.layers.Rescaling(1 / 255),
      keras.layers.Flatten(),
      keras.layers.Dense(10),
    ]
  )
  model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  hist = model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)
  assert np.isfinite(hist.history["loss"][0])
