"""Exact NumPy metrics for classification, calibration and OOD detection."""

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
from keras_unc.metrics.ood import average_precision, fpr_at_tpr, ood_metrics
from keras_unc.metrics.ranking import auroc

__all__ = [
    "CalibrationBins",
    "accuracy",
    "auroc",
    "average_precision",
    "brier_score",
    "calibration_auroc",
    "calibration_bins",
    "entropy",
    "expected_calibration_error",
    "fpr_at_tpr",
    "msp_uncertainty",
    "nll",
    "ood_metrics",
    "top_k_accuracy",
]
