"""Accuracy, calibration and selective prediction of the predictive on labelled splits."""

import numbers

import gin
import numpy as np

from keras_unc import metrics
from keras_unc.evaluators.base import Evaluator, hard_labels
from keras_unc.reporting import plots

# Set sizes with fewer examples are left out of `set_worst_size_coverage` (too noisy).
MIN_STRATUM = 20


def fraction_name(fraction):
  """0.005 -> "0.5pct", 0.01 -> "1pct" (metric-name suffix of a fraction)."""
  return f"{100 * fraction:g}pct"


@gin.configurable
class ClassificationEvaluator(Evaluator):
  """Accuracy, calibration, selective-prediction and ensemble metrics on one split.

  Reports `<prefix>/accuracy`, `top5_accuracy` (C >= 5), `nll`, `ece` (equal-width bins),
  `adaptive_ece` (equal-mass bins, Nixon et al. 2019), `classwise_ece` (Kull et al. 2019),
  `brier`, `calibration_auroc` (wrong prediction vs the model's `uncertainty`; NaN when
  every prediction is right or every one wrong), `oracle_accuracy_<f>pct` for each oracle
  fraction, `aurc`, `augrc` (generalized risk, Traub et al. 2024) and
  `risk_at_<c>pct_coverage` (error rate of the `ceil(c N)` most certain examples) for each
  risk coverage; and, when `logits` has M > 1 members (ensembles, MC samples),
  per-member accuracy/NLL and the ensemble diversity (disagreement, average KL, cosine
  similarity of the member predictions): `member_accuracy`, `member_nll` (means over
  members), `member_<m>_accuracy`, `member_<m>_nll`, `diversity_disagreement`,
  `diversity_average_kl`, `diversity_cosine_similarity`; and, when the outputs hold
  conformal `prediction_set`s (after `python -m keras_unc calibrate`), `set_coverage`,
  `set_size` (mean) and `set_worst_size_coverage` (the lowest coverage over the set sizes
  with at least `MIN_STRATUM` examples). Selective metrics rank by the
  model's `uncertainty` output (1 - max p without one). Figures: a reliability diagram and
  the accuracy-coverage curve.

  Args:
    dataset: source name (`mnist`, `tfds:cifar10`, ...).
    split: split to evaluate, TFDS slicing allowed.
    prefix: metric name prefix, e.g. "test" gives "test/accuracy".
    preprocess: preprocessing-op string for this split.
    num_bins: ECE (all three kinds) / reliability-diagram bins.
    oracle_fractions: fractions of the most uncertain examples sent to an oracle.
    top_k: extra top-k accuracies, each reported when the model has at least k classes.
    risk_coverages: coverages in (0, 1] of the selective risks `risk_at_<c>pct_coverage`.
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
    risk_coverages=(0.8,),
    plot=True,
  ):
    self.dataset, self.split, self.preprocess = dataset, split, preprocess
    self.prefix = prefix or split.split("[")[0]
    self.num_bins = num_bins
    self.oracle_fractions = tuple(oracle_fractions)
    self.top_k = tuple(top_k)
    self.risk_coverages = tuple(risk_coverages)
    for coverage in self.risk_coverages:
      number = isinstance(coverage, numbers.Real) and not isinstance(coverage, bool)
      if not (number and 0.0 < coverage <= 1.0):
        raise ValueError(
          f"ClassificationEvaluator risk_coverages must be numbers in (0, 1] (fractions of "
          f"the examples kept), got {coverage!r} in {self.risk_coverages!r}."
        )
    self.plot = plot

  def _predict(self, predict):
    outputs, labels = predict(self.dataset, self.split, self.preprocess)
    return outputs, hard_labels(labels)

  def evaluate(self, predict):
    outputs, labels = self._predict(predict)
    return {
      f"{self.prefix}/{k}": v
      for k, v in classification_metrics(
        outputs, labels, self.num_bins, self.oracle_fractions, self.top_k, self.risk_coverages
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
  outputs,
  labels,
  num_bins=15,
  oracle_fractions=(0.005, 0.01, 0.02, 0.05),
  top_k=(5,),
  risk_coverages=(0.8,),
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
  found["adaptive_ece"] = metrics.adaptive_calibration_error(p, labels, num_bins)
  found["classwise_ece"] = metrics.classwise_calibration_error(p, labels, num_bins)
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
  found["augrc"] = metrics.augrc(p, labels, u)
  for coverage in risk_coverages:
    found[f"risk_at_{fraction_name(coverage)}_coverage"] = metrics.risk_at_coverage(
      p, labels, coverage, u
    )
  if "prediction_set" in outputs:  # Conformal sets of the post-hoc stage.
    sets = outputs["prediction_set"]
    found["set_coverage"] = metrics.coverage(sets, labels)
    found["set_size"] = metrics.mean_set_size(sets)
    strata = metrics.size_stratified_coverage(sets, labels)
    enough = strata["count"] >= MIN_STRATUM
    found["set_worst_size_coverage"] = (
      float(np.min(strata["coverage"][enough])) if enough.any() else float("nan")
    )
  logits = outputs.get("logits")
  if logits is not None and logits.ndim == 3 and logits.shape[1] > 1:
    found.update(metrics.member_metrics(logits, labels, per_member=True))
    found.update(
      {f"diversity_{k}": v for k, v in metrics.ensemble_diversity(logits, from_logits=True).items()}
    )
  return found
