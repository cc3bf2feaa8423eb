"""Pluggable evaluators, chosen in gin (`train.evaluators = [@ClassificationEvaluator(), ...]`)."""

from keras_unc.evaluators.base import Evaluator, Predictor
from keras_unc.evaluators.classification import ClassificationEvaluator
from keras_unc.evaluators.fewshot import FewShotEvaluator
from keras_unc.evaluators.ood import OODEvaluator
from keras_unc.evaluators.retrieval import RetrievalEvaluator
from keras_unc.evaluators.saved_model import SavedModelNetwork, evaluate_export
from keras_unc.evaluators.shift import ShiftEvaluator
from keras_unc.evaluators.soft_labels import SoftLabelEvaluator

__all__ = [
  "ClassificationEvaluator",
  "Evaluator",
  "FewShotEvaluator",
  "OODEvaluator",
  "Predictor",
  "RetrievalEvaluator",
  "SavedModelNetwork",
  "ShiftEvaluator",
  "SoftLabelEvaluator",
  "evaluate_export",
]
