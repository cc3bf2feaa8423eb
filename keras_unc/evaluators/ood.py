"""Out-of-distribution detection: AUROC/AUPR/FPR95 of the model's uncertainty score."""

import gin

from keras_unc import metrics
from keras_unc.evaluators.base import Evaluator


@gin.configurable
class OODEvaluator(Evaluator):
  """Scores in-distribution vs each OOD split with the model's `uncertainty` (OOD positive).

  Args:
    in_dataset, in_split: the in-distribution data.
    ood: mapping `{name: (dataset, split)}` or `{name: (dataset, split, preprocess)}` of
      OOD data, e.g. `{"fashion_mnist": ("fashion_mnist", "test")}`; the optional op
      string adapts another dataset's images to the model input (e.g. `resize(8)`).
    preprocess: preprocessing-op string of the in-distribution split (and the default).
    scores: output keys used as OOD scores (higher = more OOD); `uncertainty` is the
      method's own score, `msp`/`entropy` are derived from `probs`.
  """

  name = "ood"

  def __init__(self, in_dataset, in_split="test", ood=None, preprocess="",
               scores=("uncertainty",)):
    self.in_dataset, self.in_split, self.preprocess = in_dataset, in_split, preprocess
    self.ood = dict(ood or {})
    self.scores = tuple(scores)

  def _score(self, outputs, kind):
    if kind == "uncertainty":
      return outputs["uncertainty"]
    if kind == "msp":
      return metrics.msp_uncertainty(outputs["probs"])
    if kind == "entropy":
      return metrics.entropy(outputs["probs"])
    raise ValueError(f"Unknown OOD score {kind!r}: choose from uncertainty, msp, entropy.")

  def evaluate(self, predict):
    inside, _ = predict(self.in_dataset, self.in_split, self.preprocess)
    results = {}
    for name, (dataset, split, *ops) in self.ood.items():
      outside, _ = predict(dataset, split, ops[0] if ops else self.preprocess)
      for kind in self.scores:
        found = metrics.ood_metrics(self._score(inside, kind), self._score(outside, kind))
        suffix = "" if kind == "uncertainty" else f"_{kind}"
        results.update({f"ood_{name}/{k}{suffix}": v for k, v in found.items()})
    return results
