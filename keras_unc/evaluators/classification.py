"""Accuracy and calibration of the predictive distribution on labelled splits."""

import gin

from keras_unc import metrics
from keras_unc.evaluators.base import Evaluator


@gin.configurable
class ClassificationEvaluator(Evaluator):
  """Top-1 accuracy, NLL, ECE (15 bins) and Brier score of `probs`.

  Args:
    dataset: source name (`mnist`, `tfds:cifar10`, ...).
    split: split to evaluate, TFDS slicing allowed.
    prefix: metric name prefix, e.g. "test" gives "test/accuracy".
    preprocess: preprocessing-op string for this split.
    num_bins: ECE bins.
  """

  name = "classification"

  def __init__(self, dataset, split="test", prefix=None, preprocess="", num_bins=15):
    self.dataset, self.split, self.preprocess = dataset, split, preprocess
    self.prefix = prefix or split.split("[")[0]
    self.num_bins = num_bins

  def evaluate(self, predict):
    outputs, labels = predict(self.dataset, self.split, self.preprocess)
    p = outputs["probs"]
    return {f"{self.prefix}/accuracy": metrics.accuracy(p, labels),
            f"{self.prefix}/nll": metrics.nll(p, labels),
            f"{self.prefix}/ece": metrics.expected_calibration_error(p, labels, self.num_bins),
            f"{self.prefix}/brier": metrics.brier_score(p, labels)}
