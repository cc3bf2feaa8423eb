"""Robustness to distribution shift: ImageNet-V2/A/R, ImageNet-C, CIFAR-10-C."""

import gin
import numpy as np

from keras_unc import metrics
from keras_unc.evaluators.base import Evaluator, hard_labels, split_spec

# The 15 benchmark corruptions of Hendrycks & Dietterich (2019), TFDS config names.
BENCHMARK_CORRUPTIONS = (
  "gaussian_noise",
  "shot_noise",
  "impulse_noise",
  "defocus_blur",
  "glass_blur",
  "motion_blur",
  "zoom_blur",
  "snow",
  "frost",
  "fog",
  "brightness",
  "contrast",
  "elastic_transform",
  "pixelate",
  "jpeg_compression",
)
SHIFT_METRICS = ("accuracy", "nll", "ece")


@gin.configurable
class ShiftEvaluator(Evaluator):
  """Accuracy, NLL and ECE on shifted test sets and mean over corruptions.

  Shifted sets (`datasets`) are reported as `<prefix>/<name>/<metric>`, e.g. with
  `{"imagenet_v2": ("tfds:imagenet_v2", "test", "decode|resize(224)")}`. Corrupted sets
  (`corrupted`, TFDS builders with `<type>_<severity>` configs such as
  `cifar10_corrupted` and `imagenet2012_corrupted`) are read as
  `tfds:<builder>/<type>_<severity>` for every corruption type and severity, and
  reported as the mean over all of them, `<prefix>/<name>/<metric>`, the mean per
  severity, `<prefix>/<name>/<metric>_severity<s>`, and with `per_config` each one,
  `<prefix>/<name>/<type>_<s>/<metric>`.

  Args:
    datasets: `{name: (dataset, split[, preprocess])}` of shifted sets.
    corrupted: `{name: (builder, split[, preprocess])}`, builder with or without
      `tfds:`, e.g. `{"cifar10_c": ("cifar10_corrupted", "test")}`.
    corruptions: corruption types (default the 15 benchmark ones).
    severities: severities (1..5).
    preprocess: default op string.
    prefix: metric-name prefix.
    num_bins: ECE bins.
    per_config: also report every corruption type and severity.
  """

  name = "shift"

  def __init__(
    self,
    datasets=None,
    corrupted=None,
    corruptions=BENCHMARK_CORRUPTIONS,
    severities=(1, 2, 3, 4, 5),
    preprocess="",
    prefix="shift",
    num_bins=15,
    per_config=False,
  ):
    self.datasets = {k: split_spec(v, preprocess) for k, v in dict(datasets or {}).items()}
    self.corrupted = {}
    for name, spec in dict(corrupted or {}).items():
      builder, split, ops = split_spec(spec, preprocess)
      self.corrupted[name] = (builder[5:] if builder.startswith("tfds:") else builder, split, ops)
    self.corruptions, self.severities = tuple(corruptions), tuple(severities)
    if self.corrupted and not (self.corruptions and self.severities):
      raise ValueError("ShiftEvaluator: corrupted sets need corruption types and severities.")
    self.prefix, self.num_bins, self.per_config = prefix, num_bins, per_config

  def _metrics(self, predict, dataset, split, ops, cache=True):
    outputs, labels = predict(dataset, split, ops, cache=cache)
    labels, p = hard_labels(labels), outputs["probs"]
    return {
      "accuracy": metrics.accuracy(p, labels),
      "nll": metrics.nll(p, labels),
      "ece": metrics.expected_calibration_error(p, labels, self.num_bins),
    }

  def evaluate(self, predict):
    results = {}
    for name, (dataset, split, ops) in self.datasets.items():
      for k, v in self._metrics(predict, dataset, split, ops).items():
        results[f"{self.prefix}/{name}/{k}"] = v
    for name, (builder, split, ops) in self.corrupted.items():
      found = {}  # (type, severity) -> metrics
      for kind in self.corruptions:
        for severity in self.severities:
          found[kind, severity] = self._metrics(
            predict, f"tfds:{builder}/{kind}_{severity}", split, ops, cache=False
          )
      for k in SHIFT_METRICS:
        results[f"{self.prefix}/{name}/{k}"] = float(np.mean([m[k] for m in found.values()]))
        for severity in self.severities:
          results[f"{self.prefix}/{name}/{k}_severity{severity}"] = float(
            np.mean([found[kind, severity][k] for kind in self.corruptions])
          )
        if self.per_config:
          for (kind, severity), m in found.items():
            results[f"{self.prefix}/{name}/{kind}_{severity}/{k}"] = m[k]
    return results
