"""Few-shot linear-regression accuracy of frozen embeddings (big_vision `fewshot_lsr`)."""

import gin
import numpy as np

from keras_unc import metrics
from keras_unc.evaluators.base import Evaluator, hard_labels


@gin.configurable
class FewShotEvaluator(Evaluator):
  """Closed-form ridge regression on `shots` embeddings per class, accuracy on a test split.

  For every dataset, shot count and seed, `metrics.select_shots(train_labels, shots,
  seed)` picks the shots and `metrics.fewshot_ridge_accuracy` fits and scores them.
  Reports `<prefix>/<name>_<shots>shot` (mean over seeds) and
  `<prefix>/<name>_<shots>shot_seed<seed>`. A class with fewer train examples than
  `shots` is an error.

  Args:
    datasets: `{name: (dataset, train_split, test_split)}` or
      `{name: (dataset, train_split, test_split, preprocess)}`, e.g.
      `{"cifar100": ("tfds:cifar100", "train[:10000]", "test", "resize(224)")}`.
    shots: shots per class.
    seeds: seeds of the shot selection.
    l2_reg: ridge strength.
    prefix: metric-name prefix.
  """

  name = "fewshot"

  def __init__(
    self, datasets, shots=(1, 5, 10, 25), seeds=(0, 1, 2), l2_reg=2.0**10, prefix="fewshot"
  ):
    self.datasets = {}
    for name, spec in dict(datasets).items():
      spec = tuple(spec)
      if len(spec) not in (3, 4):
        raise ValueError(
          f"Few-shot dataset {name!r}: expected (dataset, train_split, "
          f"test_split[, preprocess]), got {spec!r}."
        )
      self.datasets[name] = spec if len(spec) == 4 else spec + ("",)
    self.shots, self.seeds = tuple(shots), tuple(seeds)
    self.l2_reg, self.prefix = l2_reg, prefix

  def evaluate(self, predict):
    results = {}
    for name, (dataset, train_split, test_split, preprocess) in self.datasets.items():
      train, train_labels = predict(dataset, train_split, preprocess)
      test, test_labels = predict(dataset, test_split, preprocess)
      train_labels, test_labels = hard_labels(train_labels), hard_labels(test_labels)
      num_classes = int(max(train_labels.max(), test_labels.max())) + 1
      for shots in self.shots:
        found = []
        for seed in self.seeds:
          try:
            idx = metrics.select_shots(train_labels, shots, seed, num_classes)
          except ValueError as e:
            raise ValueError(f"Few-shot dataset {name!r} ({dataset} {train_split}): {e}") from e
          acc = metrics.fewshot_ridge_accuracy(
            train["embedding"][idx],
            train_labels[idx],
            test["embedding"],
            test_labels,
            self.l2_reg,
            num_classes,
          )
          results[f"{self.prefix}/{name}_{shots}shot_seed{seed}"] = acc
          found.append(acc)
        results[f"{self.prefix}/{name}_{shots}shot"] = float(np.mean(found))
    return results
