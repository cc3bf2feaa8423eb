"""`url`: pretrained representation uncertainties, `representation, uncertainty = model(x)`.

An uncertainty *module* (pred-net MLP, class entropy, embedding norm, Jensen–Shannon of
members, HET-XL covariance log-det) on top of any head, trained by one of the URL losses
(loss prediction by ranking or regression, probabilistic-embedding losses, contrastive
losses, or plain cross-entropy for the baselines). Everything is computed from the embedding
passed to `build_head`, so the same method trains on cached backbone features.

References: Kirchhof et al., "URL: A Representation Learning Benchmark for Transferable
Uncertainty Estimates", NeurIPS D&B 2023; Kirchhof et al., "Pretrained Visual
Uncertainties", 2024 (mkirchhof/url).
"""

import gin
from keras import ops

from keras_unc import layers
from keras_unc.methods import heads, losses
from keras_unc.methods.base import Method, float32_embedding
from keras_unc.methods.registry import register
from keras_unc.methods.url import losses as url_losses
from keras_unc.methods.url import vmf
from keras_unc.methods.url.modules import (
  EmbeddingNormUncertainty,
  HetXLWithLogDet,
  JensenShannonUncertainty,
  PredNet,
  UncertaintyRescale,
)

MODULES = ("pred_net", "class_entropy", "embed_norm", "jsd", "hetxl_det")
URL_LOSSES = (
  "losspred_order",
  "riskpred",
  "cross_entropy",
  "elk",
  "nivmf",
  "hib",
  "mcinfonce",
  "infonce",
)
_SAMPLED = ("nivmf", "hib", "mcinfonce")


@register("url")
@gin.configurable
class URL(Method):
  """An uncertainty module on the embedding, trained by a URL loss.

  Outputs: `logits [B, M, C]`, `probs`, `embedding [B, D]` (the representation) and
  `uncertainty [B]` (the module's output, rescaled; higher = less certain).

  Args:
    module: one of `MODULES`. `jsd` needs M > 1 members at inference (MC dropout or
      ensemble head); `hetxl_det` needs `head=@het_head()` with `het_head.xl = True`.
    loss: one of `URL_LOSSES`. `losspred_order` needs an even per-replica batch
      (`batch_multiple = 2`); `infonce`/`mcinfonce` (and unsupervised `hib`) need two views per
      image in consecutive rows (`train.preprocess = "views(2, [...])|flatten_views"`).
    head: a `heads.Head` (default: linear with `head_init`), e.g. `@het_head()`, `@gp_head()`,
      `@shallow_ensemble_head()`, `@mc_dropout_head()`.
    modifiers: backbone modifiers, e.g. `[@spectral_norm()]` for SNGP.
    head_init: kernel initialiser of the default linear head (class proxies of ELK/nivMF:
      not "zeros").
    unc_width, unc_depth: the pred-net MLP (URL `--unc_width`, `--unc_depth`).
    unc_start_value: rescale so the mean uncertainty starts here (0: off).
    unc_init_batches: training batches that measure the starting mean (reference: 10).
    stopgrad: the pred-net's gradient does not reach the embedding.
    freeze_classifier: the head's weights are not trained, and the loss-prediction losses
      drop their cross-entropy term (reference `ignore_ce_loss`).
    inv_temp: inverse temperature of the cross-entropy inside the loss-prediction losses,
      the ELK class concentration multiplier, nivMF's class concentration, and the
      similarity scale of the contrastive losses (reference `--inv_temp`, default 28 there).
    lambda_value: weight of the uncertainty term of the loss-prediction losses.
    hib_add_const: HIB's additive constant inside the sigmoid.
    mc_samples: vMF samples of nivMF, HIB and MCInfoNCE.
    gap, leeway_rho: margin and leeway of `losspred_order`.
    ssl: the batch holds two views per image in rows (2k, 2k+1) (URL `--ssl`).
    supervised: contrastive positives by class label; default `not ssl`.
    label_smoothing: of the `cross_entropy` loss (reference `--smoothing`, 0.1 there).
    seed: seed of the loss's Monte Carlo samples.
  """

  def __init__(
    self,
    module="pred_net",
    loss="losspred_order",
    head=None,
    modifiers=(),
    head_init="glorot_uniform",
    unc_width=1024,
    unc_depth=3,
    unc_start_value=0.001,
    unc_init_batches=10,
    stopgrad=False,
    freeze_classifier=False,
    inv_temp=1.0,
    lambda_value=1.0,
    hib_add_const=0.0,
    mc_samples=16,
    gap=0.1,
    leeway_rho=0.0,
    ssl=False,
    supervised=None,
    label_smoothing=0.0,
    seed=None,
  ):
    if module not in MODULES:
      raise ValueError(f"Unknown uncertainty module {module!r}: choose one of {MODULES}.")
    if loss not in URL_LOSSES:
      raise ValueError(f"Unknown URL loss {loss!r}: choose one of {URL_LOSSES}.")
    if loss in ("infonce", "mcinfonce") and not ssl:
      raise ValueError(
        f"URL loss {loss!r} contrasts two views of each image: set URL.ssl = "
        "True and train.preprocess to 'views(2, [...])|flatten_views'."
      )
    if loss in _SAMPLED and int(mc_samples) < 1:
      raise ValueError(f"mc_samples must be >= 1, got {mc_samples}.")
    if inv_temp <= 0:
      raise ValueError(f"inv_temp must be > 0, got {inv_temp}.")
    super().__init__(
      head or heads.Linear(head_init),
      modifiers,
      loss="member_ce",
      uncertainty="entropy",
      label_smoothing=label_smoothing,
    )
    self.module, self.url_loss = module, loss
    self.unc_width, self.unc_depth = unc_width, unc_depth
    self.unc_start_value, self.unc_init_batches = unc_start_value, unc_init_batches
    self.stopgrad, self.freeze_classifier = stopgrad, freeze_classifier
    self.inv_temp, self.lambda_value = float(inv_temp), float(lambda_value)
    self.hib_add_const, self.mc_samples = float(hib_add_const), int(mc_samples)
    self.gap, self.leeway_rho = float(gap), float(leeway_rho)
    self.ssl = bool(ssl)
    self.supervised = (not self.ssl) if supervised is None else bool(supervised)
    self.seed = seed
    self.batch_multiple = 2 if loss == "losspred_order" else 1
    self._classifier = None
    self._rescale = None

  def _head(self, embedding, num_classes):
    """The head's logits `[B, M, C]`, its extras, and the raw HET-XL log-det if asked."""
    if self.module == "hetxl_det":
      if not getattr(self.head, "xl", False):
        raise ValueError(
          "URL.module = 'hetxl_det' needs the HET-XL head: set URL.head = "
          "@het_head() and het_head.xl = True."
        )
      het = HetXLWithLogDet(self.head.het_layer(num_classes), name="het_logdet", dtype="float32")
      log_predictive, log_det = het(embedding)
      logits = layers.MemberAxis(self.members, name="logits", dtype="float32")(log_predictive)
      self._classifier = het.het.classifier
      return logits, {}, het, log_det
    logits, extras = self.head(embedding, num_classes, self.members)
    return logits, extras, None, None

  def build_head(self, embedding, num_classes):
    # The loss reads the classifier and seed generator of the network built last.
    self._classifier = self._rescale = None
    logits, extras, het, log_det = self._head(embedding, num_classes)
    if self._classifier is None:
      self._classifier = _find_layer(logits, ("head", "gp"))
    kernel = getattr(self._classifier, "kernel", None)
    if self.url_loss in ("elk", "nivmf") and (kernel is None or len(kernel.shape) != 2):
      raise ValueError(
        f"URL loss {self.url_loss!r} uses the linear classifier's weights as "
        "class proxies: use the default linear head (URL.head = None)."
      )
    if self.freeze_classifier:
      if self._classifier is None:
        raise ValueError("URL.freeze_classifier found no classifier layer in this head.")
      (het or self._classifier).trainable = False
    probs = layers.Predictive("softmax", name="probs", dtype="float32")(logits)
    embedding = float32_embedding(embedding, self.members)
    if self.module == "pred_net":
      raw = PredNet(self.unc_width, self.unc_depth, stop_gradient=self.stopgrad, name="pred_net")(
        embedding
      )
    elif self.module == "class_entropy":
      raw = layers.UncertaintyScore("entropy", name="class_entropy", dtype="float32")(probs)
    elif self.module == "embed_norm":
      raw = EmbeddingNormUncertainty(name="embed_norm", dtype="float32")(embedding)
    elif self.module == "jsd":
      raw = JensenShannonUncertainty(name="jsd", dtype="float32")(logits)
    else:
      raw = log_det
    self._rescale = UncertaintyRescale(
      self.unc_start_value, self.unc_init_batches, self.seed, name="uncertainty", dtype="float32"
    )
    return {
      "logits": logits,
      "probs": probs,
      "uncertainty": self._rescale(raw),
      "embedding": embedding,
      **extras,
    }

  def _cross_entropy(self, labels, logits, inv_temp=1.0):
    return losses.member_cross_entropy(
      labels, ops.cast(logits, "float32") * inv_temp, self.label_smoothing
    )

  def loss(self, labels, outputs):
    name = self.url_loss
    logits, unc = outputs["logits"], ops.cast(outputs["uncertainty"], "float32")
    embedding = ops.cast(outputs["embedding"], "float32")
    if name == "cross_entropy":
      return self._cross_entropy(labels, logits)
    if name in ("losspred_order", "riskpred"):
      ce = self._cross_entropy(labels, logits, self.inv_temp)
      if name == "losspred_order":
        unc_loss = url_losses.losspred_order(unc, ce, self.gap, self.leeway_rho)
      else:
        unc_loss = url_losses.riskpred(unc, ce)
      loss = self.lambda_value * unc_loss
      return loss if self.freeze_classifier else loss + ce  # CE is only a target if frozen.
    kappa = 1.0 / ops.maximum(unc, 1e-6)  # Concentration = certainty.
    mu = embedding / ops.maximum(ops.norm(embedding, axis=-1, keepdims=True), 1e-12)
    seed = self._rescale.seed_generator
    if name in ("elk", "nivmf"):
      weights = ops.cast(self._classifier.kernel, "float32")  # [D, C] class proxies.
      if name == "elk":
        class_kappa = ops.maximum(ops.norm(weights, axis=0), 1.0) * self.inv_temp
        sims = url_losses.elk_logits(embedding, kappa, weights, class_kappa)
      else:
        # The reference's per-dimension class concentrations start at inv_temp and are
        # not in its optimizer, so they stay constant.
        class_kappa = ops.full(ops.shape(ops.transpose(weights)), self.inv_temp)
        samples = vmf.sample_vmf(mu, kappa, self.mc_samples, seed)
        sims = url_losses.nivmf_logits(samples, weights, class_kappa)
      return losses.softmax_cross_entropy(labels, sims)
    batch = ops.shape(embedding)[0]
    pos, neg = url_losses.pair_masks(labels, batch, self.supervised)
    if name == "infonce":
      return url_losses.infonce(embedding, pos, neg, self.inv_temp)
    samples = vmf.sample_vmf(mu, kappa, self.mc_samples, seed)
    if name == "mcinfonce":
      return url_losses.mcinfonce(samples, pos, neg, self.inv_temp)
    return url_losses.hib(samples, pos, neg, self.inv_temp, self.hib_add_const)

  def describe(self):
    return (
      super().describe().replace("loss=member_ce", f"module={self.module}, loss={self.url_loss}")
    )


def _find_layer(tensor, names):
  """The nearest layer named one of `names` upstream of a functional tensor (the head's
  classifier: heads build it inline and keep no reference).
  """
  seen, stack = set(), [tensor]
  while stack:
    t = stack.pop()
    history = getattr(t, "_keras_history", None)
    if history is None or id(history.operation) in seen:
      continue
    layer = history.operation
    seen.add(id(layer))
    if layer.name in names:
      return layer
    for node in layer._inbound_nodes:
      stack.extend(node.input_tensors)
  return None
