"""Losses of the URL benchmark and of Pretrained Visual Uncertainties, per example `[B]`.

Loss prediction (`losspred_order`, `riskpred`) trains an uncertainty to predict the
(detached) per-example cross-entropy. The probabilistic-embedding losses treat embedding i as
a vMF with mean `z_i / ||z_i||` and concentration `kappa_i = 1 / u_i` (`keras_unc.methods.url.vmf`):
ELK and nivMF compare it with class proxies (the classifier's weight vectors), InfoNCE,
MCInfoNCE and HIB compare embeddings with each other (two views per image, or same class).

References: Kirchhof et al., "URL: A Representation Learning Benchmark for Transferable
Uncertainty Estimates", NeurIPS D&B 2023; Kirchhof et al., "Pretrained Visual
Uncertainties", 2024; Yoo & Kweon, "Learning Loss for
Active Learning", CVPR 2019; Shi & Jain, "Probabilistic Face Embeddings", ICCV 2019 (ELK);
Kirchhof et al., "A Non-isotropic Probabilistic Take on Proxy-based Deep Metric Learning",
ECCV 2022 (nivMF); Oh et al., "Modeling Uncertainty with Hedged Instance Embeddings", ICLR
2019 (HIB); Kirchhof et al., "Probabilistic Contrastive Learning ...", ICML 2023 (MCInfoNCE).
"""

import math

from keras import ops

from keras_unc.methods.url import vmf

_MASKED = -1e9  # logsumexp weight of excluded pairs: exp(-1e9) = 0.


def _f32(x):
  return ops.cast(x, "float32")


def _normalize(x, axis=-1):
  x = _f32(x)
  return x / ops.maximum(ops.norm(x, axis=axis, keepdims=True), 1e-12)


def losspred_order(uncertainty, true_loss, gap=0.1, leeway_rho=0.0):
  """Paired ranking hinge: the uncertainty should order each pair as its true loss does.

  Pairs are rows (2k, 2k+1). With `s = +1` if `loss_2k > loss_2k+1` else −1, and `s = 0`
  where `|loss_2k − loss_2k+1| < leeway_rho`, each pair costs
  `max(0, −s (u_2k − u_2k+1) + gap)`; both rows of a pair get that value. `true_loss` is
  treated as a constant.

  Args:
    uncertainty: predicted uncertainties `[B]`, B even.
    true_loss: per-example task loss `[B]` (e.g. cross-entropy).
    gap: the margin.
    leeway_rho: pairs whose losses differ by less are not ordered (cost `gap`, no gradient).
  """
  batch = uncertainty.shape[0]
  if batch is not None and batch % 2:
    raise ValueError(
      f"losspred_order pairs rows (2k, 2k+1): the per-replica batch must be "
      f"even, got {batch}. Set train.batch_size to a multiple of 2 x replicas."
    )
  u = ops.reshape(_f32(uncertainty), (-1, 2))
  t = ops.stop_gradient(ops.reshape(_f32(true_loss), (-1, 2)))
  sign = ops.where(t[:, 0] > t[:, 1], 1.0, -1.0)
  sign = ops.where(ops.abs(t[:, 0] - t[:, 1]) >= leeway_rho, sign, 0.0)
  pair = ops.relu(-sign * (u[:, 0] - u[:, 1]) + gap)
  return ops.repeat(pair, 2, axis=0)


def riskpred(uncertainty, true_loss):
  """Squared error between the uncertainty and the (detached) true loss, `[B]`."""
  return ops.square(_f32(uncertainty) - ops.stop_gradient(_f32(true_loss)))


def elk_logits(embedding, kappa, class_weights, class_kappa):
  """Expected likelihood kernel `log ∫ vMF_i(x) vMF_c(x) dx` between examples and classes.

  `= log C(κ_i) + log C(κ_c) − log C(||κ_i μ_i + κ_c μ_c||)`, `[B, C]`; used as logits.

  Args:
    embedding: `[B, D]` (normalised here).
    kappa: example concentrations `[B]`.
    class_weights: `[D, C]` class proxies (normalised here).
    class_kappa: class concentrations `[C]`.
  """
  dim = embedding.shape[-1]
  mu, proxies = _normalize(embedding), _normalize(class_weights, axis=0)
  kappa, class_kappa = _f32(kappa), _f32(class_kappa)
  cos = ops.matmul(mu, proxies)
  joint = ops.sqrt(
    ops.maximum(
      kappa[:, None] ** 2
      + class_kappa[None, :] ** 2
      + 2.0 * kappa[:, None] * class_kappa[None, :] * cos,
      1e-12,
    )
  )
  return (
    vmf.log_vmf_norm_const(kappa, dim)[:, None]
    + vmf.log_vmf_norm_const(class_kappa, dim)[None, :]
    - vmf.log_vmf_norm_const(joint, dim)
  )


def nivmf_logits(samples, class_weights, class_kappa):
  """Monte Carlo ELK between vMF samples of each example and non-isotropic class vMFs.

  Class c has direction `w_c / ||w_c||` scaled per dimension by `class_kappa[c]`:
  `m_c = (w_c / ||w_c||) ∘ κ_c`. The log-likelihood of a sample x is
  `log C(||m_c||) + ||m_c|| cos(x, m_c) + Σ log κ_c − 2 log ||m_c||`, averaged over the S
  samples in probability space (log-mean-exp). Returns `[B, C]` logits.

  Args:
    samples: vMF samples `[S, B, D]` of the examples.
    class_weights: `[D, C]` class proxies.
    class_kappa: `[C, D]` per-dimension class concentrations (> 0).
  """
  num_samples, dim = samples.shape[0], samples.shape[-1]
  class_kappa = _f32(class_kappa)
  scaled = ops.transpose(_normalize(class_weights, axis=0)) * class_kappa  # [C, D]
  norm = ops.norm(scaled, axis=-1)  # [C]
  cos = ops.einsum("sbd,cd->sbc", _f32(samples), scaled / norm[:, None])
  const = (
    vmf.log_vmf_norm_const(norm, dim) + ops.sum(ops.log(class_kappa), axis=-1) - 2.0 * ops.log(norm)
  )
  loglik = const + norm * cos
  return ops.logsumexp(loglik, axis=0) - math.log(num_samples)


def pair_masks(labels, batch, supervised):
  """Positive and negative masks `[B, B]` (float) of a contrastive batch.

  Unsupervised: rows (2k, 2k+1) are two views of one image (what `views(2, ...)` +
  `flatten_views` produce) and the only positives. Supervised: same label = positive.
  The diagonal is in neither mask.
  """
  if supervised:
    if len(labels.shape) == 2:
      labels = ops.argmax(labels, axis=-1)
    ids = ops.cast(labels, "int32")
  else:
    ids = ops.arange(batch) // 2
  same = ops.cast(ops.equal(ids[:, None], ids[None, :]), "float32")
  return same - ops.eye(batch), 1.0 - same


def _log_ratio(sim, pos, neg):
  # log Σ_pos exp(sim) − log Σ_neg exp(sim) over the last axis.
  return ops.logsumexp(ops.where(pos > 0, sim, _MASKED), axis=-1) - ops.logsumexp(
    ops.where(neg > 0, sim, _MASKED), axis=-1
  )


def _has_pairs(pos, neg):
  return ops.cast((ops.sum(pos, -1) > 0) & (ops.sum(neg, -1) > 0), "float32")


def infonce(embedding, pos, neg, inv_temp):
  """`−log Σ_pos exp(κ cos) + log Σ_neg exp(κ cos)` per example `[B]` (URL's InfoNCE).

  Examples without a positive or a negative in the batch get 0.
  """
  mu = _normalize(embedding)
  sim = inv_temp * ops.matmul(mu, ops.transpose(mu))
  valid = _has_pairs(pos, neg)
  return -ops.where(valid > 0, _log_ratio(sim, pos, neg), 0.0)


def mcinfonce(samples, pos, neg, inv_temp):
  """MCInfoNCE: InfoNCE between vMF samples, averaged over samples in probability space.

  `−log mean_s exp(log Σ_pos exp(κ x_s·x'_s) − log Σ_neg exp(κ x_s·x'_s))`, `[B]`.
  """
  num_samples = samples.shape[0]
  samples = _f32(samples)
  sim = inv_temp * ops.matmul(samples, ops.transpose(samples, (0, 2, 1)))  # [S, B, B]
  per_sample = _log_ratio(sim, pos[None], neg[None])  # [S, B]
  valid = _has_pairs(pos, neg)
  log_ratio = ops.logsumexp(per_sample, axis=0) - math.log(num_samples)
  return -ops.where(valid > 0, log_ratio, 0.0)


def hib(samples, pos, neg, inv_temp, add_const, eps=1e-5):
  """Hedged instance embeddings: binary cross-entropy of the match probability, `[B]`.

  `p_ij = mean_s sigmoid(κ x_s,i·x_s,j + b) (+ eps)`; the loss is
  `−mean_{j∈pos} log p_ij − mean_{j∈neg} log(1 − p_ij)` (the reference subtracts
  `mean_neg log p` instead of adding `mean_neg log(1 − p)`; we use HIB's likelihood).
  """
  samples = _f32(samples)
  logits = inv_temp * ops.matmul(samples, ops.transpose(samples, (0, 2, 1))) + add_const
  match = ops.clip(ops.mean(ops.sigmoid(logits), axis=0), eps, 1.0 - eps)  # [B, B]
  pos_term = ops.sum(pos * ops.log(match), -1) / ops.maximum(ops.sum(pos, -1), 1.0)
  neg_term = ops.sum(neg * ops.log(1.0 - match), -1) / ops.maximum(ops.sum(neg, -1), 1.0)
  return -(pos_term + neg_term)
