"""Exact NumPy metrics for classification, calibration, OOD detection, selective
prediction, retrieval, few-shot probing, soft labels and ensemble diversity, plus
streaming ``keras.metrics.Metric`` versions (``Streaming*``, imported lazily so
the NumPy metrics do not import Keras).

Shared input validation lives in :mod:`keras_unc.metrics.validation`.
"""

from keras_unc.metrics.calibration import (
  CalibrationBins,
  accuracy,
  brier_score,
  calibration_auroc,
  calibration_bins,
  entropy,
  expected_calibration_error,
  msp_uncertainty,
  nll,
  top_k_accuracy,
)
from keras_unc.metrics.diversity import ensemble_diversity, member_metrics
from keras_unc.metrics.fewshot import fewshot_ridge_accuracy, select_shots
from keras_unc.metrics.mahalanobis import mahalanobis_scores
from keras_unc.metrics.ood import average_precision, fpr_at_tpr, max_logit_score, ood_metrics
from keras_unc.metrics.ranking import auroc
from keras_unc.metrics.retrieval import r_auroc, recall_at_one
from keras_unc.metrics.selective import (
  accuracy_coverage_curve,
  aurc,
  oracle_collaborative_accuracy,
)
from keras_unc.metrics.soft_labels import (
  generalized_energy_distance,
  kl_to_labels,
  real_accuracy,
  soft_nll,
  spearman_uncertainty_vs_label_entropy,
)

_STREAMING = (
  "StreamingAUROC",
  "StreamingAccuracy",
  "StreamingBrier",
  "StreamingECE",
  "StreamingNLL",
)


def __getattr__(name):
  if name in _STREAMING:
    from keras_unc.metrics import streaming

    return getattr(streaming, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
  "CalibrationBins",
  "StreamingAUROC",
  "StreamingAccuracy",
  "StreamingBrier",
  "StreamingECE",
  "StreamingNLL",
  "accuracy",
  "accuracy_coverage_curve",
  "auroc",
  "aurc",
  "average_precision",
  "brier_score",
  "calibration_auroc",
  "calibration_bins",
  "ensemble_diversity",
  "entropy",
  "expected_calibration_error",
  "fewshot_ridge_accuracy",
  "fpr_at_tpr",
  "generalized_energy_distance",
  "kl_to_labels",
  "mahalanobis_scores",
  "max_logit_score",
  "member_metrics",
  "msp_uncertainty",
  "nll",
  "ood_metrics",
  "oracle_collaborative_accuracy",
  "r_auroc",
  "real_accuracy",
  "recall_at_one",
  "select_shots",
  "soft_nll",
  "spearman_uncertainty_vs_label_entropy",
  "top_k_accuracy",
]
