"""Pluggable evaluators, chosen in gin (`train.evaluators = [@ClassificationEvaluator(), ...]`)."""

from keras_unc.evaluators.base import Evaluator, Predictor
from keras_unc.evaluators.classification import ClassificationEvaluator
from keras_unc.evaluators.ood import OODEvaluator
