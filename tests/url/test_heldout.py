"""URL modules are fitted on images the backbone did not train on: the demo's split option
(`URL_BACKBONE_SPLIT` / `URL_HELDOUT_SPLIT`) and the cache's check for overlapping splits."""

import gin
import pytest

from keras_unc import config
from keras_unc.data import parse_split
from keras_unc.training.feature_cache import fitted_examples

MNIST_TRAIN = 60000


def _workdir(tmp_path, dataset="'mnist'", split="'train[:50000]'"):
  """A training workdir whose operative config trained on `dataset`/`split`."""
  ckpt = tmp_path / "work" / "checkpoints" / "ckpt-000000010"
  ckpt.mkdir(parents=True)
  lines = [f"train.dataset = {dataset}"] + ([f"train.split = {split}"] if split else [])
  (tmp_path / "work" / "config.gin").write_text("\n".join(["# Parameters for train:", *lines]))
  return str(ckpt)


def _sizes(name):
  return {"train": MNIST_TRAIN, "test": 10000}[name]


@pytest.mark.parametrize(
  "cached, overlap",
  [
    ("train[50000:]", 0),  # Held out: disjoint.
    ("train[49000:]", 1000),
    ("train[:20000]", 20000),  # The first URL demo: the backbone fitted every cached image.
    ("train", 50000),
    ("train[-15000:-5000]", 5000),
    ("train[80%:]", 2000),  # Percent bounds: 48000..60000.
    ("test", 0),  # Another split name.
  ],
)
def test_fitted_examples_intersects_the_training_and_cached_ranges(tmp_path, cached, overlap):
  assert fitted_examples(_workdir(tmp_path), "mnist", cached, _sizes) == overlap


def test_fitted_examples_is_zero_when_the_run_is_unknown_or_another_dataset(tmp_path):
  ckpt = _workdir(tmp_path)
  assert fitted_examples(ckpt, "fashion_mnist", "train", _sizes) == 0
  bare = tmp_path / "bare" / "ckpt-1"  # No config.gin next to the checkpoints folder.
  bare.mkdir(parents=True)
  assert fitted_examples(str(bare), "mnist", "train", _sizes) == 0
  macro = _workdir(tmp_path / "m", split="%SPLIT")  # Not a literal: unknown.
  assert fitted_examples(macro, "mnist", "train", _sizes) == 0


def test_fitted_examples_defaults_to_the_whole_train_split(tmp_path):
  ckpt = _workdir(tmp_path, split=None)  # train.split unbound: the trainer's "train".
  assert fitted_examples(ckpt, "mnist", "train[50000:]", _sizes) == 10000


def _value(name):
  value = config.value(name)  # A macro (`%URL_HELDOUT_SPLIT`) comes back as a reference.
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn()
  return value


def _split_of(gin_file, params=()):
  gin.clear_config()
  config.parse([gin_file], list(params), finalize=False)
  try:
    return _value("train.split"), _value("train.dataset")
  finally:
    gin.clear_config()


def test_demo_backbone_and_module_splits_are_disjoint_parts_of_mnist_train():
  backbone, dataset = _split_of("demo/url_mnist_backbone.gin")
  heldout, cache_dataset = _split_of("demo/url_mnist.gin")
  assert (backbone, heldout) == ("train[:50000]", "train[50000:]")
  assert dataset == cache_dataset == "mnist"
  _, lo_a, hi_a = parse_split(backbone, {"train": MNIST_TRAIN})
  _, lo_b, hi_b = parse_split(heldout, {"train": MNIST_TRAIN})
  assert min(hi_a, hi_b) <= max(lo_a, lo_b)  # Disjoint...
  assert (hi_a - lo_a) + (hi_b - lo_b) == MNIST_TRAIN  # ...and together the training set.
  # Training from the cache reads it by the split it was built from (all of it).
  assert _split_of("demo/url_mnist_cache.gin")[0] == heldout


def test_the_held_out_split_is_one_option():
  params = ["URL_HELDOUT_SPLIT = 'train[55000:]'"]
  assert _split_of("demo/url_mnist.gin", params)[0] == "train[55000:]"
