"""Last-layer Laplace approximation: a linear output layer with a Gaussian weight posterior.

`LaplaceLinear` is a `Dense` output layer trained as usual (its kernel and bias are the MAP
weights); after training, `fit_posterior` (NumPy, streamed over the training set's
embeddings) fits a Gaussian posterior `N(θ_MAP, Σ)` on its weights from the GGN of the
softmax cross-entropy, stored in non-trainable variables so checkpoints and the SavedModel
carry it. The predictive linearises the logits in the last-layer weights (exact: they are
linear in them), `f(x) ~ N(φ(x)ᵀW + b, Σ_f(x))`, and approximates the softmax integral.

Reference: Daxberger, Kristiadi, Immer, Eschenhagen, Bauer, Hennig, "Laplace Redux --
Effortless Bayesian Deep Learning", NeurIPS 2021; laplace-torch (`laplace/baselaplace.py`,
`lllaplace.py`, `utils/matrix.py`, `curvature/asdl.py`).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

HESSIANS = ("kron", "diag")
LINKS = ("probit", "mc")


@keras.saving.register_keras_serializable(package="keras_unc")
class LaplaceLinear(keras.layers.Layer):
  """Linear output layer `f = φW + b` with a last-layer Laplace posterior on `(W, b)`.

  Posterior (Hessian = GGN of the summed cross-entropy, N training examples, softmax p):

  - `hessian="diag"`: precision `H_W[d, c] = Σ_n φ_nd² (p_nc − p_nc²) + τ`,
    `H_b[c] = Σ_n (p_nc − p_nc²) + τ`; logit variance
    `var_c(x) = Σ_d φ_d² / H_W[d, c] + 1 / H_b[c]` (the logit covariance is diagonal).
  - `hessian="kron"` (KFAC, as laplace-torch's asdl backend): weight block
    `G ⊗ A + τ I` with `A = Σ_n φ_n φ_nᵀ / N` (D x D) and `G = Σ_n (diag p_n − p_n p_nᵀ)`
    (C x C), bias block `G + τ I` (laplace-torch keeps the bias its own block, dropping the
    weight-bias cross terms). With `A = Q_A diag(a) Q_Aᵀ`, `G = Q_G diag(g) Q_Gᵀ` the
    Jacobian `J = I_C ⊗ φᵀ` gives, by the Kronecker identity (never forming J, which is
    C x DC per example: laplace-torch #138),
    `Σ_f(x) = Q_G diag(w(x)) Q_Gᵀ`, `w_i = Σ_j ψ_j² / (g_i a_j + τ) + 1 / (g_i + τ)`,
    `ψ = Q_Aᵀ φ(x)`: O(DC + C²) a example, the same eigenvectors serving both blocks.

  Predictive (`link`):
  - "probit": one member, logits `μ_c / sqrt(1 + π/8 · var_c)` (laplace-torch's probit:
    softmax of these is the predictive).
  - "mc": S members, logit samples `f_s = μ + Q_G (√w ∘ ε_s)` (kron) or `μ + √var ∘ ε_s`
    (diag), `ε_s ~ N(0, I)`; the predictive is the mean of their softmaxes.

  Deviations from laplace-torch, all for determinism or memory: the predictive never forms
  the Jacobian (see above); eigenvalues of A and G are clipped at 0 (round-off); τ is a
  scalar found by a bounded 1-D search of the marginal likelihood instead of 100 Adam steps
  on log τ (`optimize_prior_precision`); the "nll" grid search scores the probit predictive
  (laplace-torch's default `link_approx`) whatever `link` serves. Variables are float32 and
  never autocast (small eigenvalues do not survive bfloat16).

  Before a fit (`fitted == 0`) and in training calls the layer is the MAP `Dense`: logits
  `[B, 1, C]`. Inference outputs `[B, M, C]`, M = 1 (probit) or `num_samples` (mc), float32.

  Args:
    units: classes C.
    hessian: "kron" (default) or "diag".
    link: "probit" (default) or "mc".
    num_samples: S of the "mc" link.
    seed: seed of the mc sampler's `SeedGenerator`.
    kernel_initializer, bias_initializer: of the MAP weights (zeros, as the linear head).

  Example:
  >>> layer = LaplaceLinear(10, hessian="kron")
  >>> layer(np.ones([2, 16], "float32")).shape  # MAP until fit_posterior.
  (2, 1, 10)
  """

  def __init__(
    self,
    units,
    hessian="kron",
    link="probit",
    num_samples=10,
    seed=None,
    kernel_initializer="zeros",
    bias_initializer="zeros",
    **kwargs,
  ):
    super().__init__(**kwargs)
    if hessian not in HESSIANS:
      raise ValueError(f"LaplaceLinear hessian must be one of {HESSIANS}, got {hessian!r}.")
    if link not in LINKS:
      raise ValueError(f"LaplaceLinear link must be one of {LINKS}, got {link!r}.")
    if int(units) < 1 or int(num_samples) < 1:
      raise ValueError(
        f"LaplaceLinear needs units >= 1 and num_samples >= 1, got {units} and {num_samples}."
      )
    self.units, self.hessian, self.link = int(units), hessian, link
    self.num_samples, self.seed = int(num_samples), seed
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.seed_generator = keras.random.SeedGenerator(seed) if link == "mc" else None

  @property
  def members(self):
    return self.num_samples if self.link == "mc" else 1

  def build(self, input_shape):
    d, c = int(input_shape[-1]), self.units
    # Float32 everywhere (no autocast): the posterior factors and the logit variance would
    # lose their small eigenvalues in bfloat16; the head is a small part of the compute.
    kw = dict(autocast=False, dtype="float32")
    self.kernel = self.add_weight(
      name="kernel", shape=(d, c), initializer=self.kernel_initializer, **kw
    )
    self.bias = self.add_weight(name="bias", shape=(c,), initializer=self.bias_initializer, **kw)

    def state(name, shape, init="zeros"):
      return self.add_weight(name=name, shape=shape, initializer=init, trainable=False, **kw)

    if self.hessian == "kron":
      self.eigvecs_a = state("eigvecs_a", (d, d))
      self.eigvals_a = state("eigvals_a", (d,))
      self.eigvecs_g = state("eigvecs_g", (c, c))
      self.eigvals_g = state("eigvals_g", (c,))
    else:
      self.hessian_kernel = state("hessian_kernel", (d, c))
      self.hessian_bias = state("hessian_bias", (c,))
    self.prior_precision = state("prior_precision", (), "ones")
    self.fitted = state("fitted", ())

  def _variance_terms(self, x):
    """kron: `w [B, C]` (eigenbasis of G); diag: the logit variances `[B, C]`."""
    tau = self.prior_precision
    if self.hessian == "kron":
      psi = ops.matmul(x, self.eigvecs_a)  # [B, D]
      table = 1.0 / (self.eigvals_a[:, None] * self.eigvals_g[None, :] + tau)  # [D, C]
      w = ops.matmul(ops.square(psi), table) + 1.0 / (self.eigvals_g + tau)[None, :]
    else:
      w = ops.matmul(ops.square(x), 1.0 / (self.hessian_kernel + tau))
      w = w + 1.0 / (self.hessian_bias + tau)[None, :]
    return w * self.fitted  # Unfitted: no variance (MAP).

  def call(self, inputs, training=None):
    x = ops.cast(inputs, "float32")
    mean = ops.matmul(x, self.kernel) + self.bias
    if training:
      return mean[:, None, :]
    w = self._variance_terms(x)
    if self.link == "probit":
      var = (
        ops.matmul(w, ops.transpose(ops.square(self.eigvecs_g))) if self.hessian == "kron" else w
      )
      return (mean / ops.sqrt(1.0 + math.pi / 8.0 * var))[:, None, :]
    batch = ops.shape(x)[0]
    eps = keras.random.normal((batch, self.num_samples, self.units), seed=self.seed_generator)
    noise = eps * ops.sqrt(w)[:, None, :]
    if self.hessian == "kron":
      noise = ops.matmul(noise, ops.transpose(self.eigvecs_g))
    return mean[:, None, :] + noise

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.members, self.units)

  def get_config(self):
    return {
      **super().get_config(),
      "units": self.units,
      "hessian": self.hessian,
      "link": self.link,
      "num_samples": self.num_samples,
      "seed": self.seed,
      "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
      "bias_initializer": keras.initializers.serialize(self.bias_initializer),
    }

  # -- the post-training fit (NumPy, float64) --------------------------------------------

  def curvature(self) -> Curvature:
    """A streaming accumulator of this layer's GGN at its current (MAP) weights."""
    if not self.built:
      raise ValueError(f"{self.name} is not built: call the network once before fitting.")
    return Curvature(np.asarray(self.kernel), np.asarray(self.bias), self.hessian)

  def set_posterior(self, posterior: dict, prior_precision: float) -> None:
    """Stores a `Curvature.posterior()` and τ; the layer predicts with them from now on."""
    names = ("eigvecs_a", "eigvals_a", "eigvecs_g", "eigvals_g")
    if self.hessian == "diag":
      names = ("hessian_kernel", "hessian_bias")
    for name in names:
      getattr(self, name).assign(np.asarray(posterior[name], np.float32))
    self.prior_precision.assign(float(prior_precision))
    self.fitted.assign(1.0)


def _softmax(logits):
  z = logits - logits.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


class Curvature:
  """Streams `add(features, labels)` batches into the last-layer GGN (float64).

  `posterior()` returns the eigendecomposed Kronecker factors (kron) or the GGN diagonal
  (diag), `log_marginal_likelihood(τ)` laplace-torch's closed form
  `log p(y | θ_MAP) − ½ (log det P − log det P₀ + τ ‖θ_MAP‖²)`, `P = GGN + τ I`, `P₀ = τ I`.
  """

  def __init__(self, kernel, bias, hessian):
    self.kernel = np.asarray(kernel, np.float64)
    self.bias = np.asarray(bias, np.float64)
    self.hessian = hessian
    d, c = self.kernel.shape
    self.n, self.nll = 0, 0.0
    if hessian == "kron":
      self.a, self.g = np.zeros((d, d)), np.zeros((c, c))
    else:
      self.h_kernel, self.h_bias = np.zeros((d, c)), np.zeros(c)
    self._posterior = None

  def add(self, features, labels):
    phi = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if phi.ndim != 2 or phi.shape[1] != self.kernel.shape[0]:
      raise ValueError(
        f"Laplace fit: features must be [B, {self.kernel.shape[0]}] (the head's input, the "
        f"network's 'embedding' output), got shape {phi.shape}."
      )
    if labels.ndim == 2:  # One-hot / soft labels: the class of largest weight.
      labels = labels.argmax(axis=1)
    labels = labels.astype(np.int64).reshape(-1)
    p = _softmax(phi @ self.kernel + self.bias)
    self.nll -= float(np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-300)).sum())
    self.n += len(labels)
    if self.hessian == "kron":
      self.a += phi.T @ phi
      self.g += np.diag(p.sum(axis=0)) - p.T @ p
    else:
      pp = p - p * p
      self.h_kernel += np.square(phi).T @ pp
      self.h_bias += pp.sum(axis=0)
    self._posterior = None

  def posterior(self) -> dict:
    if self.n == 0:
      raise ValueError("Laplace fit: no training examples were seen (empty fit split).")
    if self._posterior is None:
      if self.hessian == "kron":
        eig_a, vec_a = np.linalg.eigh(self.a / self.n)  # laplace-torch's 1 / N on A.
        eig_g, vec_g = np.linalg.eigh(self.g)
        self._posterior = {
          "eigvecs_a": vec_a,
          "eigvals_a": np.maximum(eig_a, 0.0),  # PSD up to round-off.
          "eigvecs_g": vec_g,
          "eigvals_g": np.maximum(eig_g, 0.0),
        }
      else:
        self._posterior = {"hessian_kernel": self.h_kernel, "hessian_bias": self.h_bias}
    return self._posterior

  @property
  def num_params(self):
    return self.kernel.size + self.bias.size

  def log_det_posterior_precision(self, tau):
    post = self.posterior()
    if self.hessian == "kron":
      g = post["eigvals_g"]
      return float(np.log(np.outer(g, post["eigvals_a"]) + tau).sum() + np.log(g + tau).sum())
    return float(
      np.log(post["hessian_kernel"] + tau).sum() + np.log(post["hessian_bias"] + tau).sum()
    )

  def log_marginal_likelihood(self, tau):
    scatter = tau * (np.square(self.kernel).sum() + np.square(self.bias).sum())
    log_det_ratio = self.log_det_posterior_precision(tau) - self.num_params * math.log(tau)
    return -self.nll - 0.5 * (log_det_ratio + scatter)

  def logit_moments(self, features, tau):
    """Mean `[B, C]` and the diagonal of the logit covariance `[B, C]` (NumPy, as the layer)."""
    phi = np.asarray(features, np.float64)
    post = self.posterior()
    mean = phi @ self.kernel + self.bias
    if self.hessian == "kron":
      g = post["eigvals_g"]
      table = 1.0 / (np.outer(post["eigvals_a"], g) + tau)
      w = np.square(phi @ post["eigvecs_a"]) @ table + 1.0 / (g + tau)
      return mean, w @ np.square(post["eigvecs_g"]).T
    var = np.square(phi) @ (1.0 / (post["hessian_kernel"] + tau))
    return mean, var + 1.0 / (post["hessian_bias"] + tau)


def probit_probs(mean, var):
  """laplace-torch's probit predictive `softmax(μ / sqrt(1 + π/8 var))` (NumPy)."""
  return _softmax(mean / np.sqrt(1.0 + math.pi / 8.0 * var))


def optimize_prior_precision(
  curvature: Curvature,
  method="marglik",
  heldout=None,
  log10_min=-4.0,
  log10_max=4.0,
  grid_size=100,
):
  """The prior precision τ: "marglik" maximises `curvature.log_marginal_likelihood` over
  log τ (laplace-torch runs 100 Adam steps on log τ from τ = 1; a deterministic bounded
  1-D search, log τ in [-10, 10], finds the same optimum without a learning rate);
  "nll" is laplace-torch's `gridsearch`: τ in `logspace(log10_min, log10_max, grid_size)`
  minimising the probit predictive's NLL on `heldout = (features, labels)`.
  """
  if method == "marglik":
    from scipy import optimize

    found = optimize.minimize_scalar(
      lambda log_tau: -curvature.log_marginal_likelihood(math.exp(log_tau)),
      bounds=(-10.0, 10.0),
      method="bounded",
      options={"xatol": 1e-4},
    )
    return float(math.exp(found.x))
  if method != "nll":
    raise ValueError(f"prior_method must be 'marglik' or 'nll', got {method!r}.")
  if heldout is None or len(heldout[1]) == 0:
    raise ValueError(
      "prior_method='nll' tunes the prior precision on a held-out split: set "
      "Laplace.heldout_split (or calibrate.split), e.g. 'train[55000:]'."
    )
  features, labels = heldout
  labels = np.asarray(labels).astype(np.int64)
  best, best_nll = None, np.inf
  for tau in np.logspace(log10_min, log10_max, grid_size):
    probs = probit_probs(*curvature.logit_moments(features, tau))
    nll = -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300)).mean()
    if nll < best_nll:
      best, best_nll = float(tau), nll
  return best
