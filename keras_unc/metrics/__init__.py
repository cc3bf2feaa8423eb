"""Exact NumPy metrics for classification, calibration, OOD detection, selective
prediction, retrieval, few-shot probing, soft labels and ensemble diversity, plus
streaming ``keras.metrics.Metric`` versions (``Streaming*``, imported lazily so
the NumPy metrics do not import Keras).

Shared input validation lives in :mod:`keras_unc.metrics.validation`.
"""

from keras_unc.metrics.bootstrap import (
  bootstrap_indices,
  percentile_bootstrap,
  percentile_interval,
)
from keras_unc.metrics.calibration import (
  CalibrationBins,
  accuracy,
  adaptive_calibration_error,
  brier_score,
  calibration_auroc,
  calibration_bins,
  classwise_calibration_error,
  entropy,
  expected_calibration_error,
  msp_uncertainty,
  nll,
  top_k_accuracy,
)
from keras_unc.metrics.conformal import coverage, mean_set_size, size_stratified_coverage, sscv
from keras_unc.metrics.diversity import ensemble_diversity, member_metrics
from keras_unc.metrics.fewshot import fewshot_ridge_accuracy, select_shots
from keras_unc.metrics.mahalanobis import (
  MahalanobisFit,
  mahalanobis_fit,
  mahalanobis_score,
  mahalanobis_scores,
)
from keras_unc.metrics.ood import average_precision, fpr_at_tpr, max_logit_score, ood_metrics
from keras_unc.metrics.ood_scores import (
  ViMFit,
  energy_score,
  gen_score,
  knn_fit,
  knn_scores,
  mutual_information,
  react_fit,
  react_scores,
  variation_ratio,
  vim_default_dim,
  vim_fit,
  vim_scores,
)
from keras_unc.metrics.ranking import auroc
from keras_unc.metrics.retrieval import r_auroc, recall_at_one
from keras_unc.metrics.selective import (
  accuracy_coverage_curve,
  augrc,
  aurc,
  oracle_collaborative_accuracy,
  risk_at_coverage,
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
  "MahalanobisFit",
  "StreamingAUROC",
  "StreamingAccuracy",
  "StreamingBrier",
  "StreamingECE",
  "StreamingNLL",
  "ViMFit",
  "accuracy",
  "accuracy_coverage_curve",
  "adaptive_calibration_error",
  "augrc",
  "auroc",
  "aurc",
  "average_precision",
  "brier_score",
  "calibration_auroc",
  "bootstrap_indices",
  "calibration_bins",
  "classwise_calibration_error",
  "coverage",
  "ensemble_diversity",
  "entropy",
  "expected_calibration_error",
  "fewshot_ridge_accuracy",
  "fpr_at_tpr",
  "generalized_energy_distance",
  "kl_to_labels",
  "mahalanobis_fit",
  "mahalanobis_score",
  "mahalanobis_scores",
  "max_logit_score",
  "mean_set_size",
  "member_metrics",
  "msp_uncertainty",
  "nll",
  "ood_metrics",
  "oracle_collaborative_accuracy",
  "percentile_bootstrap",
  "percentile_interval",
  "r_auroc",
  "real_accuracy",
  "recall_at_one",
  "risk_at_coverage",
  "select_shots",
  "size_stratified_coverage",
  "soft_nll",
  "spearman_uncertainty_vs_label_entropy",
  "sscv",
  "top_k_accuracy",
  # OOD scores (ood_scores.py).
  "energy_score",
  "gen_score",
  "knn_fit",
  "knn_scores",
  "mutual_information",
  "react_fit",
  "react_scores",
  "variation_ratio",
  "vim_default_dim",
  "vim_fit",
  "vim_scores",
]
