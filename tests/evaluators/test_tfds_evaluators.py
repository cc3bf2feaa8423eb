"""Soft-label and shift evaluators on TFDS-named datasets, with `tfds.testing.mock_data`."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_unc import metrics
from keras_unc.data.tfds_labels import label_source
from keras_unc.evaluators import Predictor, ShiftEvaluator, SoftLabelEvaluator
from keras_unc.evaluators.base import softmax
from tests.evaluators.helpers import FakeNet, direct

N = 24


@pytest.fixture(scope="module")
def net():
  return FakeNet(members=2)


def _read(name, split, keys, resize=None):
  """Examples of a (mocked) TFDS dataset read with TFDS directly, images resized as the
  `resize(8)` op does."""
  ds = tfds.builder(name).as_dataset(split=split, shuffle_files=False)
  rows = {k: [] for k in ("image",) + tuple(keys)}
  for ex in ds:
    image = ex["image"]
    if resize:
      image = tf.image.resize(image, (resize, resize))
    rows["image"].append(image.numpy())
    for k in keys:
      rows[k].append(ex[k].numpy())
  return rows


def _soft_want(out, q, sets):
  p = out["probs"]
  return {
    "real_accuracy": metrics.real_accuracy(p, sets),
    "soft_nll": metrics.soft_nll(p, q),
    "kl": metrics.kl_to_labels(p, q),
    "ged": metrics.generalized_energy_distance(softmax(out["logits"]), q),
    "spearman_label_entropy": metrics.spearman_uncertainty_vs_label_entropy(out["uncertainty"], q),
  }


def test_cifar10h_soft_labels(net):
  with tfds.testing.mock_data(num_examples=N):
    found = SoftLabelEvaluator("tfds:cifar10_h").evaluate(Predictor(net, batch_size=10))
    rows = _read("cifar10_h", "test", ("soft_label", "human_labels"))
    votes = SoftLabelEvaluator(
      "tfds:cifar10_h", label_key="human_labels", label_kind="counts", prefix="votes"
    )
    found.update(votes.evaluate(Predictor(net, batch_size=10)))
  out = direct(net, np.stack(rows["image"]))
  soft = np.stack(rows["soft_label"]).astype(np.float64)
  q = soft / soft.sum(1, keepdims=True)  # Mock soft labels are not normalised.
  want = {f"cifar10_h/{k}": v for k, v in _soft_want(out, q, q > 0).items()}
  counts = np.stack([np.bincount(h, minlength=10) for h in rows["human_labels"]])
  q = counts / counts.sum(1, keepdims=True)
  want.update({f"votes/{k}": v for k, v in _soft_want(out, q, q > 0).items()})
  assert found.keys() == want.keys()
  for k, v in want.items():
    assert found[k] == pytest.approx(v, abs=1e-5), k


def test_imagenet_real_label_sets(net):
  net1000 = FakeNet(num_classes=1000, members=1, seed=3)
  with tfds.testing.mock_data(num_examples=N):
    source = label_source("tfds:imagenet2012_real", "real_label")
    assert source.num_classes == 1000 and source.label_kind == "set"
    evaluator = SoftLabelEvaluator("tfds:imagenet2012_real", preprocess="resize(8)")
    assert evaluator.split == "validation" and evaluator.label_key == "real_label"
    found = evaluator.evaluate(Predictor(net1000, batch_size=10))
    rows = _read("imagenet2012_real", "validation", ("real_label",), resize=8)
  out = direct(net1000, np.stack(rows["image"]))
  sets = np.zeros((N, 1000), bool)
  for i, labels in enumerate(rows["real_label"]):
    sets[i, labels] = True
  q = sets / sets.sum(1, keepdims=True)
  want = _soft_want(out, q, [np.unique(r) for r in rows["real_label"]])
  assert found.keys() == {f"imagenet2012_real/{k}" for k in want}
  for k, v in want.items():
    assert found[f"imagenet2012_real/{k}"] == pytest.approx(v, abs=1e-5), k


def test_label_source_errors():
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match="no feature"):
      label_source("tfds:cifar10_h", "nope")
    with pytest.raises(ValueError, match="sequence of class ids"):
      label_source("tfds:cifar10_h", "human_labels", "soft")
  with pytest.raises(ValueError, match="label_key"):
    SoftLabelEvaluator("tfds:cifar10")


def _shift_want(out, labels):
  p = out["probs"]
  return {
    "accuracy": metrics.accuracy(p, labels),
    "nll": metrics.nll(p, labels),
    "ece": metrics.expected_calibration_error(p, labels, 15),
  }


def test_shift_sets_and_corruptions():
  net1000 = FakeNet(num_classes=1000, members=1, seed=4)
  types, severities = ("gaussian_noise", "frost"), (1, 3)
  with tfds.testing.mock_data(num_examples=N):
    evaluator = ShiftEvaluator(
      datasets={
        "imagenet_v2": ("tfds:imagenet_v2", "test"),
        "imagenet_a": ("tfds:imagenet_a", "test"),
        "imagenet_r": ("tfds:imagenet_r", "test"),
      },
      corrupted={
        "imagenet_c": ("imagenet2012_corrupted", "validation"),
        "cifar10_c": ("tfds:cifar10_corrupted", "test", ""),
      },
      corruptions=types,
      severities=severities,
      preprocess="resize(8)",
      per_config=True,
    )
    found = evaluator.evaluate(Predictor(net1000, batch_size=16))
    want = {}
    for name in ("imagenet_v2", "imagenet_a", "imagenet_r"):
      rows = _read(name, "test", ("label",), resize=8)
      got = _shift_want(direct(net1000, np.stack(rows["image"])), np.array(rows["label"]))
      want.update({f"shift/{name}/{k}": v for k, v in got.items()})
    for name, builder, split, size in (
      ("imagenet_c", "imagenet2012_corrupted", "validation", 8),
      ("cifar10_c", "cifar10_corrupted", "test", None),
    ):
      per = {}
      for kind in types:
        for s in severities:
          rows = _read(f"{builder}/{kind}_{s}", split, ("label",), resize=size)
          labels = np.array(rows["label"])
          per[kind, s] = _shift_want(direct(net1000, np.stack(rows["image"])), labels)
          want.update({f"shift/{name}/{kind}_{s}/{k}": v for k, v in per[kind, s].items()})
      for k in ("accuracy", "nll", "ece"):
        want[f"shift/{name}/{k}"] = np.mean([m[k] for m in per.values()])
        for s in severities:
          want[f"shift/{name}/{k}_severity{s}"] = np.mean([per[t, s][k] for t in types])
  assert found.keys() == want.keys()
  for k, v in want.items():
    assert found[k] == pytest.approx(v, abs=1e-5), k
