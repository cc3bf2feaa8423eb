"""`laplace`: a deterministic network + a last-layer Laplace posterior fitted after training.

Reference: Daxberger et al., "Laplace Redux -- Effortless Bayesian Deep Learning", NeurIPS
2021 (laplace-torch's defaults: last layer, KFAC Hessian, probit predictive, prior precision
by marginal likelihood).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import gin
import keras
import numpy as np

from keras_unc.layers import laplace as laplace_lib
from keras_unc.methods.base import Method
from keras_unc.methods.heads import Head
from keras_unc.methods.registry import register

log = logging.getLogger(__name__)

# batches(role, split, limit): `(embedding [B, D], labels)` batches of `split` ("fit": None is
# `train.split`; "heldout": None is `calibrate.split`), at most `limit` examples.
Batches = Callable[[str, str | None, int | None], Iterable[tuple[np.ndarray, np.ndarray]]]


def _hard(labels):
  labels = np.asarray(labels)
  return labels.argmax(axis=1) if labels.ndim == 2 else labels.reshape(-1)


class LaplaceHead(Head):
  """A `LaplaceLinear` output layer (`head`), zero-initialised as the linear head."""

  def __init__(self, hessian="kron", link="probit", num_samples=10):
    self.args = dict(hessian=hessian, link=link, num_samples=num_samples)

  def __call__(self, embedding, num_classes, members):
    if members != 1:
      raise ValueError("Last-layer Laplace sits on an untiled backbone (members=1).")
    logits = laplace_lib.LaplaceLinear(num_classes, name="head", dtype="float32", **self.args)(
      embedding
    )
    return keras.layers.Identity(name="logits", dtype="float32")(logits), {}


@register("laplace")
@gin.configurable
class Laplace(Method):
  """Deterministic training, then a last-layer Laplace posterior (`layers.LaplaceLinear`).

  The trainer calls `fit_after_training` once after the last step (before the last
  evaluation and the export); the posterior is stored in the head's variables and saved
  with the final checkpoint, so a resumed or `--mode=eval` run uses it as fitted.

  Args:
    hessian: "kron" (KFAC, default) or "diag" GGN of the last layer.
    link: "probit" (default) or "mc" predictive.
    num_samples: samples of the "mc" link.
    prior_method: "marglik" (default: maximise the closed-form log marginal likelihood on
      the fit data, as laplace-torch's `optimize_prior_precision`) or "nll" (laplace-torch's
      `gridsearch`: probit NLL on `heldout_split`).
    fit_split: split the curvature is fitted on (default: `train.split`).
    fit_examples: at most this many of its examples (None: all, as laplace-torch).
    heldout_split: held-out split of `prior_method="nll"` (default: `calibrate.split`).
    heldout_examples: at most this many held-out examples (None: all).
    grid_size, log10_prior_min, log10_prior_max: the "nll" grid (laplace-torch: 100, -4, 4).
    uncertainty, label_smoothing: as `Method`.

  Example:
  ```python
  keras_unc.train(workdir, method=Laplace(hessian="diag", prior_method="nll",
                                          heldout_split="train[55000:]"), ...)
  ```
  """

  name = "laplace"

  def __init__(
    self,
    hessian: str = "kron",
    link: str = "probit",
    num_samples: int = 10,
    prior_method: str = "marglik",
    fit_split: str | None = None,
    fit_examples: int | None = None,
    heldout_split: str | None = None,
    heldout_examples: int | None = None,
    grid_size: int = 100,
    log10_prior_min: float = -4.0,
    log10_prior_max: float = 4.0,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
  ):
    if prior_method not in ("marglik", "nll"):
      raise ValueError(f"Laplace.prior_method must be 'marglik' or 'nll', got {prior_method!r}.")
    for name, value in (("fit_examples", fit_examples), ("heldout_examples", heldout_examples)):
      if value is not None and int(value) < 1:
        raise ValueError(f"Laplace.{name} must be None (all) or >= 1, got {value}.")
    super().__init__(
      LaplaceHead(hessian, link, num_samples),
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
    self.prior_method = prior_method
    self.fit_split, self.fit_examples = fit_split, fit_examples
    self.heldout_split, self.heldout_examples = heldout_split, heldout_examples
    self.grid = dict(log10_min=log10_prior_min, log10_max=log10_prior_max, grid_size=grid_size)

  @staticmethod
  def layer(network: keras.Model) -> laplace_lib.LaplaceLinear:
    stack = [network]
    while stack:
      found = stack.pop()
      if isinstance(found, laplace_lib.LaplaceLinear):
        return found
      stack.extend(getattr(found, "layers", []))
    raise ValueError("The network has no LaplaceLinear layer: was it built by Laplace?")

  def fit_after_training(self, network: keras.Model, batches: Batches) -> bool:
    """Fits the posterior and τ unless the stored one is already fitted; returns whether
    it fitted. `batches` (see `Batches`) streams the embeddings of a split.
    """
    head = self.layer(network)
    if float(head.fitted.numpy()) > 0:
      return False
    curvature = head.curvature()
    for features, labels in batches("fit", self.fit_split, self.fit_examples):
      curvature.add(features, labels)
    heldout = None
    if self.prior_method == "nll":
      found = list(batches("heldout", self.heldout_split, self.heldout_examples))
      if found:
        heldout = (
          np.concatenate([f for f, _ in found]),
          np.concatenate([_hard(y) for _, y in found]),
        )
    tau = laplace_lib.optimize_prior_precision(curvature, self.prior_method, heldout, **self.grid)
    head.set_posterior(curvature.posterior(), tau)
    log.info(
      "Laplace (%s, %s): fitted on %d examples; prior precision %.4g (%s), log marglik %.2f.",
      head.hessian,
      head.link,
      curvature.n,
      tau,
      self.prior_method,
      curvature.log_marginal_likelihood(tau),
    )
    return True
