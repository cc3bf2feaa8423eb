"""Agreement with human label distributions (CIFAR-10H) and label sets (ImageNet ReaL)."""

import logging

import gin
import numpy as np

from keras_unc import metrics
from keras_unc.data.tfds_labels import label_source
from keras_unc.evaluators.base import Evaluator, softmax

log = logging.getLogger(__name__)

# dataset -> (label feature, label kind, split); the label features of the TFDS builders.
PRESETS = {
  "tfds:cifar10_h": ("soft_label", "soft", "test"),
  "tfds:imagenet2012_real": ("real_label", "set", "validation"),
}


@gin.configurable
class SoftLabelEvaluator(Evaluator):
  """Soft-label NLL, KL, ReaL accuracy, GED and Spearman(uncertainty, label entropy).

  The labels are read from a TFDS feature holding a label distribution (`soft`, e.g.
  CIFAR-10H `soft_label`), annotator votes (`counts`, e.g. CIFAR-10H `human_labels`) or
  a set of valid labels (`set`, ImageNet ReaL `real_label`; a set is the uniform
  distribution over its classes for the distribution metrics). Reports, under
  `<prefix>/`: `real_accuracy` (argmax among the labels with any mass / in the set),
  `soft_nll`, `kl` (KL(labels || p)), `ged` (generalised energy distance of the member
  predictions) and `spearman_label_entropy` (NaN when undefined). Examples without any
  label (empty ReaL sets) are skipped.

  Args:
    dataset: `tfds:<builder>` (presets: `tfds:cifar10_h`, `tfds:imagenet2012_real`).
    split: split (default from the preset, else "test").
    label_key: the label feature (default from the preset).
    label_kind: `soft`, `counts` or `set` (default from the preset or the feature type).
    preprocess: preprocessing-op string (ImageNet: e.g. "decode|resize(224)").
    prefix: metric-name prefix (default the builder name).
    image_key: the image feature.
  """

  name = "soft_labels"

  def __init__(
    self,
    dataset="tfds:cifar10_h",
    split=None,
    label_key=None,
    label_kind=None,
    preprocess="",
    prefix=None,
    image_key="image",
  ):
    preset = PRESETS.get(dataset, (None, None, "test"))
    self.dataset = dataset
    self.label_key = label_key or preset[0]
    if not self.label_key:
      raise ValueError(
        f"SoftLabelEvaluator: set label_key for {dataset!r} (presets: {sorted(PRESETS)})."
      )
    self.label_kind = label_kind or (preset[1] if self.label_key == preset[0] else None)
    self.split = split or preset[2]
    self.preprocess, self.image_key = preprocess, image_key
    self.prefix = prefix or dataset.split(":", 1)[-1].replace("/", "_")
    self._source = None

  def source(self):
    if self._source is None:  # Kept: the predictor caches its pipeline by source.
      self._source = label_source(
        self.dataset, self.label_key, self.label_kind, image_key=self.image_key
      )
    return self._source

  def evaluate(self, predict):
    outputs, labels = predict(self.source(), self.split, self.preprocess)
    return {f"{self.prefix}/{k}": v for k, v in soft_label_metrics(outputs, labels).items()}


def soft_label_metrics(outputs, labels):
  """The metrics of `SoftLabelEvaluator` (unprefixed) from outputs and `[N, C]` labels."""
  labels = np.asarray(labels, np.float64)
  p = outputs["probs"]
  found = {"real_accuracy": metrics.real_accuracy(p, labels > 0)}
  valid = labels.sum(axis=1) > 0
  q = labels[valid] / labels[valid].sum(axis=1, keepdims=True)
  p = p[valid]
  found["soft_nll"] = metrics.soft_nll(p, q)
  found["kl"] = metrics.kl_to_labels(p, q)
  logits = outputs.get("logits")
  found["ged"] = metrics.generalized_energy_distance(
    softmax(logits[valid]) if logits is not None else p, q
  )
  try:
    found["spearman_label_entropy"] = metrics.spearman_uncertainty_vs_label_entropy(
      outputs["uncertainty"][valid], q
    )
  except ValueError as e:  # Constant uncertainty or label entropy: undefined.
    log.warning("Spearman(uncertainty, label entropy) is undefined: %s", e)
    found["spearman_label_entropy"] = float("nan")
  return found
