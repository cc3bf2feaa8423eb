"""Figures: PNG files in WORKDIR/plots and TensorBoard image summaries every round."""

import glob
import os

import numpy as np
import tensorflow as tf

from keras_unc.evaluators import ClassificationEvaluator, OODEvaluator, Predictor
from keras_unc.evaluators.base import Evaluator
from keras_unc.evaluators.runner import run_round
from keras_unc.reporting import plots
from tests.evaluators.helpers import FakeNet


class ArrayFigure(Evaluator):
  """An evaluator whose figure is a raw RGB array and that reports no metric."""

  def evaluate(self, predict):
    return {}

  def figures(self, predict):
    image = np.zeros((6, 5, 3), np.uint8)
    image[..., 0] = 200
    return {"custom/array": image}


def _image_tags(logdir):
  tags = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          tags.setdefault(value.tag, []).append(event.step)
  return tags


def test_run_round_writes_pngs_and_image_summaries(tmp_path):
  evaluators = [
    ClassificationEvaluator("digits", "test"),
    OODEvaluator(
      "digits",
      "test",
      ood={"mnist": ("mnist", "test[:100]", "resize(8)")},
      scores=("uncertainty", "msp"),
    ),
    ArrayFigure(),
  ]
  writer = tf.summary.create_file_writer(str(tmp_path / "eval"))
  predictor = Predictor(FakeNet(), batch_size=128)
  for step in (5, 10):
    found = run_round(evaluators, predictor, str(tmp_path), writer, step)
    assert found["step"] == step and "ood_mnist/auroc" in found
  names = (
    "test_reliability_diagram",
    "test_accuracy_coverage",
    "ood_mnist_uncertainty_histogram",
    "custom_array",
  )
  want = {f"{n}_step{s}.png" for n in names for s in (5, 10)}
  assert set(os.listdir(tmp_path / "plots")) == want
  for name in want:
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "plots" / name))).numpy()
    assert png.ndim == 3 and png.shape[-1] == 4
    if name.startswith("custom"):
      assert png.shape == (6, 5, 4) and (png[..., 0] == 200).all() and (png[..., 3] == 255).all()
    else:
      assert png.shape[0] > 100 and png[..., :3].std() > 10  # A real drawing, not blank.
  tags = _image_tags(str(tmp_path / "eval"))
  for tag in (
    "test/reliability_diagram",
    "test/accuracy_coverage",
    "ood_mnist/uncertainty_histogram",
    "custom/array",
  ):
    assert sorted(tags.get(tag, [])) == [5, 10], (tag, tags)


def test_plot_false_draws_nothing(tmp_path):
  evaluators = [
    ClassificationEvaluator("digits", "test", plot=False),
    OODEvaluator(
      "digits", "test", ood={"m": ("mnist", "test[:50]", "resize(8)")}, scores=("msp",), plot=False
    ),
  ]
  writer = tf.summary.create_file_writer(str(tmp_path / "eval"))
  run_round(evaluators, Predictor(FakeNet(), batch_size=128), str(tmp_path), writer, 1)
  assert not os.path.exists(tmp_path / "plots")


def test_to_rgba_and_file_name():
  assert plots.file_name("ood_a/b c", 7) == "ood_a_b_c_step7.png"
  rgba = plots.to_rgba(np.full((2, 3), 0.5))
  assert rgba.shape == (2, 3, 4) and rgba.dtype == np.uint8 and rgba[0, 0, 0] == 128
  fig = plots.score_histogram(np.zeros(5), np.ones(5))
  assert plots.to_rgba(fig).shape[-1] == 4
