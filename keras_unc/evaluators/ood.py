"""Out-of-distribution detection: AUROC / AUPR / FPR95 of several OOD scores per OOD set."""

import logging
import warnings

import gin
import numpy as np

from keras_unc import metrics
from keras_unc.evaluators.base import Evaluator, hard_labels, split_spec
from keras_unc.reporting import plots

log = logging.getLogger(__name__)

DEFAULT_SCORES = (
  "uncertainty",
  "msp",
  "entropy",
  "max_logit",
  "mahalanobis",
  "relative_mahalanobis",
)
SCORES = (
  *DEFAULT_SCORES,
  "energy",
  "gen",
  "knn",
  "mutual_information",
  "variation_ratio",
  "ood_score",
)
_FITTED = ("mahalanobis", "relative_mahalanobis", "knn")  # Fitted on train embeddings.


@gin.configurable
class OODEvaluator(Evaluator):
  """Scores in-distribution vs each OOD set (OOD positive) with several scores.

  Scores (higher = more OOD): `uncertainty` (the method's own output), `msp`
  (1 − max p), `entropy` (of p), `max_logit` (−max logit, member-averaged logits),
  `energy` (−logsumexp of the member-averaged logits, Liu et al. 2020), `gen` (GEN, Liu et
  al. 2023, on p), `mutual_information` and `variation_ratio` (over the members of `logits
  [N, M, C]`; they need M > 1: an ensemble or MC method), `mahalanobis`,
  `relative_mahalanobis` and `knn` (on the `embedding` output: class means and a shared
  covariance, or the bank of normalised embeddings, fitted on the in-distribution train
  split once per evaluation round for the in-distribution and every OOD set together), and
  `ood_score` (the output of a fitted post-hoc detector, `keras_unc.posthoc.detectors`,
  served by an exported model or added by the post-hoc stage). ViM and ReAct exist only as
  post-hoc detectors: they need the network's last linear layer, which evaluators never see
  (they see outputs only). Formulas: `keras_unc.metrics.ood_scores`.

  Metrics `ood_<set>/<metric>` for the `uncertainty` score and
  `ood_<set>/<metric>_<score>` for the others, with metric in `auroc`, `aupr_out`,
  `aupr_in`, `fpr95`. Figure: histogram of the method's uncertainty in vs out of
  distribution, per OOD set.

  Args:
    in_dataset, in_split: the in-distribution data.
    ood: mapping `{name: (dataset, split)}` or `{name: (dataset, split, preprocess)}` of
      OOD data, e.g. `{"fashion_mnist": ("fashion_mnist", "test")}`; the optional op
      string adapts another dataset's images to the model input (e.g. `resize(8)`).
    preprocess: preprocessing-op string of the in-distribution split (and the default).
    scores: subset of `SCORES` (default `DEFAULT_SCORES`, which work for every model).
    train_dataset, train_split: in-distribution train data of the Mahalanobis fit
      (default `in_dataset` and "train").
    train_preprocess: its op string (default `preprocess`).
    max_train_examples: fit on at most the first this many train examples (an unsliced
      split is read as `split[:N]`, so only those are predicted); None: all of them.
    knn_k, knn_bank_size: the kNN score's neighbour rank and bank size (a seeded random
      subsample of the train embeddings; None: all of them), as `metrics.knn_fit`.
    plot: draw the uncertainty histograms every round.
  """

  name = "ood"

  def __init__(
    self,
    in_dataset,
    in_split="test",
    ood=None,
    preprocess="",
    scores=DEFAULT_SCORES,
    train_dataset=None,
    train_split="train",
    train_preprocess=None,
    max_train_examples=None,
    knn_k=50,
    knn_bank_size=None,
    plot=True,
  ):
    self.in_dataset, self.in_split, self.preprocess = in_dataset, in_split, preprocess
    self.ood = {name: split_spec(spec, preprocess) for name, spec in dict(ood or {}).items()}
    self.scores = tuple(scores)
    unknown = [s for s in self.scores if s not in SCORES]
    if unknown:
      raise ValueError(f"Unknown OOD score(s) {unknown}: choose from {', '.join(SCORES)}.")
    self.train_dataset = train_dataset or in_dataset
    self.train_split = train_split
    self.train_preprocess = preprocess if train_preprocess is None else train_preprocess
    if max_train_examples is not None and max_train_examples < 1:
      raise ValueError(f"max_train_examples must be positive, got {max_train_examples}.")
    self.max_train_examples = max_train_examples
    if isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1:
      raise ValueError(f"knn_k must be a positive integer, got {knn_k!r}.")
    if knn_bank_size is not None and (
      isinstance(knn_bank_size, bool) or not isinstance(knn_bank_size, int) or knn_bank_size < 1
    ):
      raise ValueError(f"knn_bank_size must be a positive integer or None, got {knn_bank_size!r}.")
    self.knn_k, self.knn_bank_size = knn_k, knn_bank_size
    self.plot = plot
    self._fit_cache = (None, {})  # (train embeddings of this round, {score: per-set}).
    self._warned = set()
    in_key = (in_dataset, in_split, preprocess)
    for name, spec in self.ood.items():
      if spec == in_key:
        self._warned.add(name)
        _warn(
          f"OOD set {name!r} {spec} is the in-distribution set itself: its OOD metrics "
          "measure nothing (AUROC 0.5)."
        )

  def _train_data(self, predict):
    split, n = self.train_split, self.max_train_examples
    if n is not None and "[" not in split:
      split = f"{split}[:{n}]"
    outputs, labels = predict(self.train_dataset, split, self.train_preprocess)
    emb, labels = outputs["embedding"], hard_labels(labels)
    key = emb  # The predictor's cached array: the same object all round (a slice is not).
    if n is not None:
      emb, labels = emb[:n], labels[:n]
    return emb, labels, key

  def _fitted(self, predict, kind, inside, outsides):
    """Per-set scores of `kind`, one fit per round for the in set and all OOD sets."""
    train_emb, train_labels, key = self._train_data(predict)
    fitted_on, cache = self._fit_cache
    if fitted_on is not key:  # A new round (the predictor's cache was reset).
      cache = {}
      self._fit_cache = (key, cache)
    if kind not in cache:
      sets = [inside] + list(outsides.values())
      for outputs in sets:
        if "embedding" not in outputs:
          raise ValueError(f"OOD score {kind!r} needs the network output 'embedding'.")
      test_emb = np.concatenate([o["embedding"] for o in sets])
      if kind == "knn":
        bank = metrics.knn_fit(train_emb, self.knn_bank_size)
        scores = metrics.knn_scores(bank, test_emb, self.knn_k)
      else:
        scores = metrics.mahalanobis_scores(
          train_emb, train_labels, test_emb, relative=kind == "relative_mahalanobis"
        )
      sizes = np.cumsum([len(o["embedding"]) for o in sets])[:-1]
      parts = np.split(scores, sizes)
      cache[kind] = {"__in__": parts[0], **dict(zip(outsides, parts[1:]))}
    return cache[kind]

  def _score(self, outputs, kind):
    if kind == "uncertainty":
      return outputs["uncertainty"]
    if kind == "msp":
      return metrics.msp_uncertainty(outputs["probs"])
    if kind == "entropy":
      return metrics.entropy(outputs["probs"])
    if kind == "max_logit":
      return metrics.max_logit_score(outputs["logits"])
    if kind == "energy":
      return metrics.energy_score(outputs["logits"])
    if kind == "gen":
      return metrics.gen_score(outputs["probs"])
    if kind == "mutual_information":
      return metrics.mutual_information(outputs["logits"])
    if kind == "variation_ratio":
      return metrics.variation_ratio(outputs["logits"])
    if kind == "ood_score":
      if "ood_score" not in outputs:
        raise ValueError(
          "OOD score 'ood_score' needs the output 'ood_score' of a fitted post-hoc detector "
          "(an exported model with a detector, or `python -m keras_unc calibrate` with "
          "calibrate.detector): these outputs have none. Drop it from OODEvaluator.scores."
        )
      return outputs["ood_score"]
    raise ValueError(f"Unknown OOD score {kind!r}: choose from {', '.join(SCORES)}.")

  def _predict_all(self, predict):
    inside, _ = predict(self.in_dataset, self.in_split, self.preprocess)
    outsides = {}
    for name, (dataset, split, ops) in self.ood.items():
      outsides[name], _ = predict(dataset, split, ops)
      if name not in self._warned and _same_outputs(inside, outsides[name]):
        self._warned.add(name)
        _warn(
          f"OOD set {name!r} gives exactly the in-distribution outputs: it is probably "
          "the same data, and its OOD metrics measure nothing."
        )
    return inside, outsides

  def scores_of(self, predict, kind):
    """`({"__in__": in-distribution scores, name: OOD scores, ...})` of one score kind."""
    inside, outsides = self._predict_all(predict)
    if kind in _FITTED:
      return self._fitted(predict, kind, inside, outsides)
    return {
      "__in__": self._score(inside, kind),
      **{name: self._score(out, kind) for name, out in outsides.items()},
    }

  def evaluate(self, predict):
    results = {}
    for kind in self.scores:
      found = self.scores_of(predict, kind)
      suffix = "" if kind == "uncertainty" else f"_{kind}"
      for name in self.ood:
        values = metrics.ood_metrics(found["__in__"], found[name])
        results.update({f"ood_{name}/{k}{suffix}": v for k, v in values.items()})
    return results

  def figures(self, predict):
    if not self.plot or not self.ood:
      return {}
    kind = "uncertainty" if "uncertainty" in self.scores else self.scores[0]
    found = self.scores_of(predict, kind)
    return {
      f"ood_{name}/{kind}_histogram": plots.score_histogram(
        found["__in__"],
        found[name],
        f"{kind}: {self.in_dataset} vs {name}",
        label_in=f"{self.in_dataset} (in)",
        label_out=f"{name} (OOD)",
      )
      for name in self.ood
    }


def _same_outputs(a, b):
  key = "embedding" if "embedding" in a and "embedding" in b else "probs"
  return a[key].shape == b[key].shape and np.array_equal(a[key], b[key])


def _warn(message):
  log.warning(message)
  warnings.warn(message, UserWarning, stacklevel=3)
