"""Tests for keras_unc.data.sources (local, sklearn and mocked TFDS sources)."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_unc.data import get_source, parse_split
from keras_unc.data.sources import ArraySource

SIZES = {"train": 60000, "test": 10000}


@pytest.mark.parametrize(
  "split, want",
  [
    ("train", ("train", 0, 60000)),
    ("train[:50000]", ("train", 0, 50000)),
    ("train[50000:]", ("train", 50000, 60000)),
    ("train[:10%]", ("train", 0, 6000)),
    ("train[10%:20%]", ("train", 6000, 12000)),
    ("test[-100:]", ("test", 9900, 10000)),
    ("test[5:99999]", ("test", 5, 10000)),
    ("test[7:3]", ("test", 7, 7)),
  ],
)
def test_parse_split(split, want):
  assert parse_split(split, SIZES) == want


def test_parse_split_errors():
  with pytest.raises(ValueError, match=r"Unknown split 'valid'.*\['test', 'train'\]"):
    parse_split("valid", SIZES)
  with pytest.raises(ValueError, match="Malformed split"):
    parse_split("train[::2]", SIZES)


def test_digits():
  from sklearn.datasets import load_digits

  src = get_source("digits")
  assert (src.num_classes, src.image_shape, src.random_access) == (10, (8, 8, 1), True)
  assert src.num_examples("train") == 1500 and src.num_examples("test") == 297
  x, y = src.arrays("test")
  d = load_digits()
  np.testing.assert_array_equal(x[..., 0], np.round(d.images[1500:] * 255 / 16))
  np.testing.assert_array_equal(y, d.target[1500:])
  assert x.dtype == np.uint8 and y.dtype == np.int64 and x.max() == 255
  # load(): same examples, same order, slices honoured.
  ex = list(src.load("test[10:13]").as_numpy_iterator())
  assert [e["label"] for e in ex] == list(y[10:13])
  np.testing.assert_array_equal(ex[0]["image"], x[10])


def test_mnist(data_dir):
  src = get_source("mnist", data_dir)
  x, y = src.arrays("train")
  assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8 and x.max() == 255
  assert list(y[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the official order
  assert np.bincount(y).tolist()[:2] == [5923, 6742]  # official train counts
  xs, ys = src.arrays("train[50000:]")
  np.testing.assert_array_equal(xs, x[50000:])
  assert src.num_examples("test") == 10000 and src.num_examples("train[:10%]") == 6000
  assert list(src.arrays("test")[1][:5]) == [7, 2, 1, 0, 4]
  with pytest.raises(ValueError, match=r"Unknown split 'valid'.*\['test', 'train'\]"):
    src.arrays("valid")


def test_fashion_mnist(data_dir):
  src = get_source("fashion_mnist", data_dir)
  x, y = src.arrays("train")
  assert x.shape == (60000, 28, 28, 1) and x.dtype == np.uint8
  assert list(y[:10]) == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
  assert np.bincount(src.arrays("test")[1]).tolist() == [1000] * 10


def test_unknown_source():
  with pytest.raises(ValueError, match="mnist, fashion_mnist, digits, tfds:<builder>"):
    get_source("cifar")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_missing_files(name, tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*launch/fetch_data.sh"):
    get_source(name, str(tmp_path))


def test_data_dir_from_env_and_gin(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_UNC_DATA_DIR", str(tmp_path / "env"))
  with pytest.raises(FileNotFoundError, match="env"):
    get_source("mnist")
  # A scoped binding: leaves no global gin state behind for other tests.
  gin.parse_config(f"data_test/get_source.data_dir = '{tmp_path / 'gin'}'")
  with gin.config_scope("data_test"):
    with pytest.raises(FileNotFoundError, match="gin"):  # gin beats env
      get_source("mnist")


def test_labels_out_of_range_in_memory():
  bad = {"train": (np.zeros((3, 2, 2, 1), np.uint8), np.array([0, 10, 1]))}
  src = ArraySource("toy", 10, (2, 2, 1), {"train": 3}, lambda: bad)
  with pytest.raises(ValueError, match=r"Label 10 .*'toy/train'.*num_classes=10"):
    src.arrays("train")


def test_tfds_mocked():
  with tfds.testing.mock_data(num_examples=5):
    src = get_source("tfds:cifar10")
    assert (src.num_classes, src.image_shape, src.random_access) == (10, (32, 32, 3), False)
    assert src.num_examples("train") == 5
    ex = list(src.load("train").as_numpy_iterator())
    assert set(ex[0]) == {"image", "label"} and ex[0]["image"].dtype == np.uint8
    assert [e["label"] for e in ex] == [e["label"] for e in src.load("train").as_numpy_iterator()]
    with pytest.raises(NotImplementedError, match="random access"):
      src.arrays("train")


def test_tfds_skip_decoding_and_decode_op():
  from keras_unc.data import parse_ops

  with tfds.testing.mock_data(num_examples=2):
    ex = next(iter(get_source("tfds:mnist", skip_decoding=True).load("train")))
  assert ex["image"].dtype == tf.string
  img = parse_ops("decode")(ex)["image"]
  assert img.dtype == tf.uint8 and img.shape == (28, 28, 1)


def test_tfds_label_out_of_range():
  def as_dataset(self, *args, **kwargs):
    return tf.data.Dataset.from_tensor_slices(
      {"image": tf.zeros([2, 28, 28, 1], tf.uint8), "label": tf.constant([3, 12], tf.int64)}
    )

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    ds = get_source("tfds:mnist").load("train")
    with pytest.raises(
      tf.errors.InvalidArgumentError, match=r"(?s)dataset tfds:mnist.*12.*num_classes=10"
    ):
      list(ds)


def test_tfds_not_prepared(tmp_path):
  src = get_source("tfds:mnist", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=rf"'mnist'.*{tmp_path}.*offline.*tfds build mnist"):
    src.num_examples("train")
