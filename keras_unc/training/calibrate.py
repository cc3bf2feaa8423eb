"""The post-hoc stage: fit calibrators, conformal sets and OOD detectors on a held-out split
of a trained workdir, save them, and export the SavedModel with them inside.

    python -m keras_unc calibrate --workdir=DIR [--gin_file=...] [--gin_param=...]

(`--gin_file` defaults to `DIR/config.gin`, the operative config of the training run.) From
Python: `keras_unc.calibrate("DIR", split="train[55000:]", calibrator="temperature")`, or
as the last stage of training with `train.calibrate_at_end = True`.

It loads the newest checkpoint, predicts the calibration split (refused when it overlaps
the training split of that run), fits the configured components, evaluates the
`train.evaluators` before and after (the "after" metrics are prefixed `posthoc/`), writes
the state to `DIR/posthoc/` atomically (its manifest names the checkpoint; a later
checkpoint makes it stale) and re-exports `DIR/export` with the components inside.
Nothing is written before every component has fitted, so a refusal leaves the checkpoints,
the previous post-hoc state and the export as they were.
"""

from __future__ import annotations

import copy
import logging
import os

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_unc import config, posthoc
from keras_unc.data import get_source
from keras_unc.evaluators import Predictor
from keras_unc.evaluators.base import Prefixed, hard_labels
from keras_unc.evaluators.runner import run_round
from keras_unc.layers import gaussian_process
from keras_unc.posthoc import state as posthoc_state
from keras_unc.training import export as export_lib
from keras_unc.training import feature_cache, restore

log = logging.getLogger(__name__)

POSTHOC_DIR = "posthoc"
PREFIX = "posthoc/"


class CalibrationDataError(ValueError):
  """The calibration data cannot give a valid post-hoc fit (overlap, too small)."""


def _component(kind, value):
  if value is None or value == "":
    return None
  component = posthoc.get(kind, value)() if isinstance(value, str) else value
  if getattr(component, "kind", None) != kind:
    raise ValueError(
      f"calibrate.{kind} must be a registered {kind} name ({', '.join(posthoc.names(kind))}) "
      f"or a {kind} object, got {value!r}."
    )
  return component


def linear_head(network):
  """`(W [D, C], b [C])` of the network's last linear layer (`head`) when the logits are
  `embedding @ W + b`, else None (ViM and ReAct need it).
  """
  found, normalised = None, False
  stack = [network]
  while stack:
    layer = stack.pop()
    if layer.name == "head_bn":
      normalised = True
    if layer.name == "head" and isinstance(layer, keras.layers.Dense):
      found = layer
    stack.extend(getattr(layer, "layers", []))
  if found is None or normalised:
    return None
  kernel = np.asarray(found.kernel, np.float64)
  bias = np.asarray(found.bias, np.float64) if found.use_bias else np.zeros(kernel.shape[1])
  return kernel, bias


def _check_held_out(checkpoint, dataset, split, source):
  overlap = feature_cache.fitted_examples(checkpoint["path"], dataset, split, source.num_examples)
  if overlap:
    raise CalibrationDataError(
      f"The calibration split {dataset!r} {split!r} overlaps the data the checkpoint was "
      f"trained on by {overlap} examples (the run's train.split in its config.gin): a "
      "calibration fitted on training data is over-confident. Hold out a slice that training "
      "never saw, e.g. train.split='train[:55000]' and calibrate.split='train[55000:]'."
    )


def _match_uncertainty(components, outputs):
  """A calibrator left with `uncertainty=None` recomputes the model's `uncertainty` from the
  calibrated probs when that output is the predictive's msp or entropy (checked on the
  calibration outputs): otherwise (e.g. URL's uncertainty module) it is left as it is.
  """
  probs, found = np.asarray(outputs["probs"], np.float64), outputs.get("uncertainty")
  if found is None:
    return
  msp = 1.0 - probs.max(axis=1)
  entropy = -np.sum(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-30)), 0.0), axis=1)
  kind = next(
    (k for k, v in (("msp", msp), ("entropy", entropy)) if np.allclose(found, v, atol=1e-5)),
    None,
  )
  for c in components:
    if c.kind == "calibrator" and getattr(c, "uncertainty", "absent") is None and kind:
      c.uncertainty = kind


def _fit_split(split, limit):
  """`split` limited to its first `limit` examples where the split string allows it."""
  if limit is None or "[" in split:
    return split
  return f"{split}[:{int(limit)}]"


def _after_evaluators(evaluators, components, transform):
  """The `posthoc/` evaluators: each configured one on the transformed outputs, the OOD
  ones scoring the fitted detector's `ood_score`.
  """
  after = []
  has_detector = any(c.kind == "detector" for c in components)
  for evaluator in evaluators:
    if has_detector and hasattr(evaluator, "ood") and hasattr(evaluator, "scores"):
      evaluator = copy.copy(evaluator)
      evaluator.scores = tuple(dict.fromkeys((*evaluator.scores, "ood_score")))
    after.append(Prefixed(evaluator, PREFIX, transform))
  return after


@gin.configurable(denylist=["workdir", "network", "method", "checkpoint"])
def calibrate(
  workdir: str,
  *,
  split: str = gin.REQUIRED,
  dataset: str | None = None,
  preprocess: str = "",
  calibrator=None,
  conformal=None,
  detector=None,
  fit_split: str | None = None,
  fit_preprocess: str | None = None,
  max_fit_examples: int | None = 10000,
  evaluators=None,
  export: bool = True,
  batch_size: int | None = None,
  network=None,
  method=None,
  checkpoint=None,
):
  """Fits the post-hoc components of `workdir`'s newest checkpoint on a held-out split.

  Args:
    workdir: a trained workdir (its gin config must be parsed: the CLI parses
      `DIR/config.gin` unless `--gin_file` is given).
    split: the calibration split, held out from training (e.g. `train[55000:]`); a split
      overlapping the run's `train.split` of the same dataset is refused.
    dataset: its source (default `train.dataset`).
    preprocess: its op string (an evaluation transform, no augmentation).
    calibrator: `None`, a registered calibrator name (`temperature`, `vector`,
      `isotonic`) or a calibrator object (gin: `@temperature_calibrator()`).
    conformal: `None`, a conformal predictor name (`thr`, `aps`, `raps`) or object
      (gin: `@aps_conformal()` with `aps_conformal.alpha = 0.1`).
    detector: `None`, an OOD detector name (`energy`, `gen`, `vim`, `knn`, `react`,
      `mahalanobis`, `relative_mahalanobis`, `msp`, `max_logit`, `mutual_information`,
      `variation_ratio`) or object; its `is_ood` threshold is fitted on the calibration
      split at the detector's `tpr`.
    fit_split, fit_preprocess: in-distribution training data of detectors that fit on it
      (Mahalanobis statistics, the kNN bank, ViM's subspace, ReAct's percentile); default
      `train.split` and `preprocess`.
    max_fit_examples: at most this many of them (an unsliced split is read as
      `split[:N]`); None: all.
    evaluators: evaluators run before and after (default `train.evaluators`); the after
      metrics are prefixed `posthoc/`, the OOD evaluators also score `ood_score`.
    export: re-export `workdir/export` with the components inside.
    batch_size: prediction batch size (default `train.eval_batch_size`).
    network, method, checkpoint: a restored network, its method and checkpoint info (the
      trainer passes them at the end of training); default: restored from `workdir`.

  Returns:
    `{"step", "metrics" (before and posthoc/ after), "components", "posthoc_dir",
    "export"}`.
  """
  components = [
    c
    for c in (
      _component("calibrator", calibrator),
      _component("conformal", conformal),
      _component("detector", detector),
    )
    if c is not None
  ]
  if not components:
    raise ValueError(
      "Nothing to fit: set calibrate.calibrator, calibrate.conformal and/or "
      "calibrate.detector (e.g. --gin_param=\"calibrate.calibrator='temperature'\")."
    )
  components = posthoc_state.ordered(components)
  if network is None:
    network, method, checkpoint = restore.restore_network(workdir)
    network = restore.served_network(network)  # SWA/EMA/SWAG: what training served.
  dataset = dataset or config.value("train.dataset")
  if dataset.startswith("cached:"):
    raise CalibrationDataError(
      f"calibrate.dataset is the feature cache {dataset!r}: calibration predicts images "
      "through the full network; set calibrate.dataset to the image dataset (e.g. 'mnist')."
    )
  source = get_source(dataset)
  _check_held_out(checkpoint, dataset, split, source)
  batch_size = batch_size or config.value("train.eval_batch_size")
  gaussian_process.refresh_covariance_caches(network)  # GP heads: one solve, not one a batch.
  predictor = Predictor(network, batch_size)
  outputs, labels = predictor(dataset, split, preprocess)
  labels = hard_labels(labels)
  train_outputs = train_labels = None
  if any(getattr(c, "needs_train", False) for c in components):
    fit_split = fit_split or config.value("train.split")
    train_data = config.value("train.dataset")
    train_data = dataset if train_data.startswith("cached:") else train_data
    train_outputs, train_labels = predictor(
      train_data,
      _fit_split(fit_split, max_fit_examples),
      preprocess if fit_preprocess is None else fit_preprocess,
    )
    train_labels = hard_labels(train_labels)
    if max_fit_examples is not None:
      train_outputs = {k: v[:max_fit_examples] for k, v in train_outputs.items()}
      train_labels = train_labels[:max_fit_examples]
  _match_uncertainty(components, outputs)
  data = posthoc.FitData(outputs, labels, train_outputs, train_labels, linear_head(network))
  for component in components:  # Detectors on the network's outputs, then calibrated probs.
    component.fit(data)
    if component.kind == "calibrator":
      data = posthoc.FitData(
        {**outputs, **component.apply(outputs)},
        labels,
        train_outputs,
        train_labels,
        data.linear_head,
      )
  log.info(
    "Fitted %s on %d examples of %s %s.", [c.name for c in components], len(labels), dataset, split
  )

  def transform(found):
    return posthoc_state.apply(components, found)

  evaluators = list(config.query("train.evaluators", ()) if evaluators is None else evaluators)
  found = {}
  step = int(checkpoint.get("step") or 0)
  if evaluators:
    writer = tf.summary.create_file_writer(os.path.join(workdir, "eval"))
    found = run_round(
      evaluators + _after_evaluators(evaluators, components, transform),
      predictor,
      workdir,
      writer,
      step,
    )
    writer.flush()
  manifest = {
    "checkpoint": checkpoint,
    "data": {
      "dataset": dataset,
      "split": split,
      "preprocess": preprocess,
      "num_examples": int(len(labels)),
    },
    "fit_data": None
    if train_outputs is None
    else {
      "dataset": config.value("train.dataset"),
      "split": fit_split,
      "num_examples": int(len(train_labels)),
    },
    "method": getattr(method, "name", None),
  }
  directory = posthoc_state.save(os.path.join(workdir, POSTHOC_DIR), components, manifest)
  export_path = None
  if export:
    export_path = export_lib.export_saved_model(
      network,
      os.path.join(workdir, "export"),
      tuple(network.inputs[0].shape[1:]),
      posthoc=components,
    )
  return {
    "step": step,
    "metrics": found,
    "components": components,
    "posthoc_dir": directory,
    "export": export_path,
  }


def load_fresh(workdir, checkpoint):
  """The components of `workdir/posthoc/` fitted on `checkpoint` (info dict); `[]` when the
  workdir has no post-hoc state; a stale one raises `StalePosthocError`.
  """
  directory = os.path.join(workdir, POSTHOC_DIR)
  if not os.path.isfile(os.path.join(directory, posthoc_state.MANIFEST)):
    return []
  components, _ = posthoc_state.load(directory, checkpoint)
  return components
