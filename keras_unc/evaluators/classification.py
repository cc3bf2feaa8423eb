"""Accuracy, calibration and selective prediction of the predictive on labelled splits."""

import gin
import numpy as np

from keras_unc import metrics
from keras_unc.evaluators.base import Evaluator, hard_labels
from keras_unc.reporting import plots


def fraction_name(fraction):
  """0.005 -> "0.5pct", 0.01 -> "1pct" (metric-name suffix of a fraction)."""
  return f"{100 * fraction:g}pct"


@gin.configurable
class ClassificationEvaluator(Evaluator):
  """Accuracy, calibration, selective-prediction and ensemble metrics on one split.

  Reports `<prefix>/accuracy`, `top5_accuracy` (C >= 5), `nll`, `ece`, `brier`,
  `calibration_auroc` (wrong prediction vs the model's `uncertainty`; NaN when every
  prediction is right or every one wrong), `oracle_accuracy_<f>pct` for each oracle
  fraction, `aurc`; and, when `logits` has M > 1 members (ensembles, MC samples),
  per-member accuracy/NLL and the ensemble diversity (disagreement, average KL, cosine
  similarity of the member predictions): `member_accuracy`, `member_nll` (means over
  members), `member_<m>_accuracy`, `member_<m>_nll`, `diversity_disagreement`,
  `diversity_average_kl`, `diversity_cosine_similarity`. Figures: a reliability diagram and the
  accuracy-coverage curve.

  Args:
    dataset: source name (`mnist`, `tfds:cifar10`, ...).
    split: split to evaluate, TFDS slicing allowed.
    prefix: metric name prefix, e.g. "test" gives "test/accuracy".
    preprocess: preprocessing-op string for this split.
    num_bins: ECE / reliability-diagram bins.
    oracle_fractions: fractions of the most uncertain examples sent to an oracle.
    top_k: extra top-k accuracies, each reported when the model has at least k classes.
    plot: draw the reliability diagram and the accuracy-coverage curve every round.
  """

  name = "classification"

  def __init__(
    self,
    dataset,
    split="test",
    prefix=None,
    preprocess="",
    num_bins=15,
    oracle_fractions=(0.005, 0.01, 0.02, 0.05),
    top_k=(5,),
    plot=True,
  ):
    self.dataset, self.split, self.preprocess = dataset, split, preprocess
    self.prefix = prefix or split.split("[")[0]
    self.num_bins = num_bins
    self.oracle_fractions = tuple(oracle_fractions)
    self.top_k = tuple(top_k)
    self.plot = plot

  def _predict(self, predict):
    outputs, labels = predict(self.dataset, self.split, self.preprocess)
    return outputs, hard_labels(labels)

  def evaluate(self, predict):
    outputs, labels = self._predict(predict)
    return {
      f"{self.prefix}/{k}": v
      for k, v in classification_metrics(
        outputs, labels, self.num_bins, self.oracle_fractions, self.top_k
      ).items()
    }

  def figures(self, predict):
    if not self.plot:
      return {}
    outputs, labels = self._predict(predict)
    p, u = outputs["probs"], outputs.get("uncertainty")
    bins = metrics.calibration_bins(p, labels, self.num_bins)
    coverage, accuracy = metrics.accuracy_coverage_curve(p, labels, u)
    where = f"{self.dataset} {self.split}"
    return {
      f"{self.prefix}/reliability_diagram": plots.reliability_diagram(
        bins, f"Reliability diagram ({where})"
      ),
      f"{self.prefix}/accuracy_coverage": plots.accuracy_coverage(
        coverage, accuracy, f"Accuracy-coverage ({where})"
      ),
    }


def classification_metrics(
  outputs, labels, num_bins=15, oracle_fractions=(0.005, 0.01, 0.02, 0.05), top_k=(5,)
):
  """The metrics of `ClassificationEvaluator` (unprefixed) from outputs and int labels."""
  p = outputs["probs"]
  u = outputs.get("uncertainty")
  num_classes = p.shape[1]
  found = {"accuracy": metrics.accuracy(p, labels)}
  for k in top_k:
    if num_classes >= k:
      found[f"top{k}_accuracy"] = metrics.top_k_accuracy(p, labels, k)
  found["nll"] = metrics.nll(p, labels)
  found["ece"] = metrics.expected_calibration_error(p, labels, num_bins)
  found["brier"] = metrics.brier_score(p, labels)
  wrong = int(np.sum(p.argmax(axis=1) != labels))
  found["calibration_auroc"] = (
    metrics.calibration_auroc(p, labels, u) if 0 < wrong < len(labels) else float("nan")
  )
  for fraction in oracle_fractions:
    found[f"oracle_accuracy_{fraction_name(fraction)}"] = metrics.oracle_collaborative_accuracy(
      p, labels, fraction, u
    )
  found["aurc"] = metrics.aurc(p, labels, u)
  logits = outputs.get("logits")
  if logits is not None and logits.ndim == 3 and logits.shape[1] > 1:
    found.update(metrics.member_metrics(logits, labels, per_member=True))
    found.update(
      {f"diversity_{k}": v for k, v in metrics.ensemble_diversity(logits, from_logits=True).items()}
    )
  return found
