"""The `url` method: output convention, every module x loss trains, the trainer's checks,
and a trained pred-net whose uncertainty predicts the loss."""

import functools

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from keras_unc import methods
from keras_unc.backbones import vit
from keras_unc.methods import heads
from keras_unc.methods.url.method import URL
from keras_unc.training.network import build_network
from tests.e2e.helpers import run_inprocess

TINY_VIT = functools.partial(
  vit, "Ti/4", width=16, depth=1, mlp_dim=32, num_heads=2, pooling="gap", posemb="sincos2d"
)
SMALL = dict(unc_width=8, unc_depth=2, mc_samples=4)

COMBOS = [  # (module, loss, extra URL arguments)
  ("pred_net", "losspred_order", {}),
  ("pred_net", "riskpred", dict(freeze_classifier=True)),
  ("class_entropy", "cross_entropy", dict(label_smoothing=0.1)),
  ("embed_norm", "infonce", dict(ssl=True)),
  ("pred_net", "elk", {}),
  ("pred_net", "nivmf", dict(stopgrad=True)),
  ("pred_net", "hib", dict(hib_add_const=2.0)),
  ("pred_net", "mcinfonce", dict(ssl=True)),
  ("jsd", "cross_entropy", dict(head=heads.MCDropoutHead(0.2, 4))),
  ("class_entropy", "cross_entropy", dict(head=heads.ShallowEnsemble(3))),
  ("hetxl_det", "cross_entropy", dict(head="hetxl")),
]


@pytest.mark.parametrize("module,loss,extra", COMBOS, ids=[f"{m}-{l}" for m, l, _ in COMBOS])
def test_every_module_and_loss_gives_finite_loss_and_gradients(module, loss, extra):
  if extra.get("head") == "hetxl":
    gin.parse_config(
      ["het_head.num_factors = 3", "het_head.train_mc_samples = 8", "het_head.test_mc_samples = 8"]
    )
    extra = dict(extra, head=heads.Heteroscedastic(xl=True))
  method = URL(module=module, loss=loss, **SMALL, **extra)
  net = build_network(method, 10, (8, 8, 1), backbone=TINY_VIT, image_size=8, num_channels=1)
  x = np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 1)).astype("float32")
  labels = tf.constant([0, 0, 1, 1, 2, 2, 3, 3])
  with tf.GradientTape() as tape:
    per_example = method.loss(labels, net(x, training=True))
    total = tf.reduce_mean(per_example)
  grads = dict(
    zip([v.path for v in net.trainable_variables], tape.gradient(total, net.trainable_variables))
  )
  assert per_example.shape == (8,) and np.isfinite(float(total))
  assert all(np.all(np.isfinite(g)) for g in grads.values() if g is not None)
  backbone = {v.path for v in net.get_layer("vit").trainable_variables}
  backbone_grads = [g for p, g in grads.items() if p in backbone and g is not None]
  assert backbone_grads  # Every URL loss trains the representation.
  out = net(x, training=False)
  assert out["uncertainty"].shape == (8,) and out["embedding"].shape == (8, 16)
  assert np.all(np.isfinite(np.asarray(out["uncertainty"])))
  if module == "pred_net":
    pred_net = [g for p, g in grads.items() if p.startswith("pred_net/")]
    assert pred_net and all(g is not None for g in pred_net)
  if extra.get("freeze_classifier"):
    assert not any(p.startswith("head/") for p in grads)


def test_stopgrad_keeps_the_module_gradient_out_of_the_backbone():
  # Pure-uncertainty loss (riskpred without its CE term): only the pred-net may learn.
  method = URL(loss="riskpred", freeze_classifier=True, stopgrad=True, **SMALL)
  net = build_network(method, 10, (8, 8, 1), backbone=TINY_VIT, image_size=8, num_channels=1)
  x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 1)).astype("float32")
  with tf.GradientTape() as tape:
    total = tf.reduce_mean(method.loss(tf.constant([0, 1, 2, 3]), net(x, training=True)))
  grads = tape.gradient(total, net.trainable_variables)
  for v, g in zip(net.trainable_variables, grads):
    assert (g is not None) == v.path.startswith("pred_net/"), v.path


def test_outputs_and_rescale_on_a_head_only_network():
  # Everything comes from the embedding: the method trains on cached features.
  method = URL(module="embed_norm", loss="cross_entropy", unc_start_value=0.25, unc_init_batches=1)
  emb = keras.Input((5,))
  net = keras.Model(emb, method.build_head(emb, 3))
  z = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
  out = net(z, training=True)
  assert set(out) == {"logits", "probs", "uncertainty", "embedding"}
  np.testing.assert_allclose(np.asarray(out["embedding"]), z)
  inv_norm = 1 / np.linalg.norm(z, axis=-1)
  np.testing.assert_allclose(
    np.asarray(out["uncertainty"]), inv_norm * 0.25 / inv_norm.mean(), rtol=1e-5
  )  # The mean starts at unc_start_value.
  np.testing.assert_allclose(float(np.mean(net(z)["uncertainty"])), 0.25, rtol=1e-5)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (dict(module="foo"), "Unknown uncertainty module 'foo'"),
    (dict(loss="bar"), "Unknown URL loss 'bar'"),
    (dict(loss="infonce"), "set URL.ssl = True"),
    (dict(loss="mcinfonce"), "views\\(2"),
    (dict(loss="nivmf", mc_samples=0), "mc_samples must be >= 1"),
    (dict(inv_temp=0.0), "inv_temp must be > 0"),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    URL(**kwargs)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (dict(module="hetxl_det"), "needs the HET-XL head"),
    (dict(loss="elk", head=heads.ShallowEnsemble(2)), "class proxies"),
  ],
)
def test_bad_compositions(kwargs, message):
  emb = keras.Input((5,))
  with pytest.raises(ValueError, match=message):
    URL(**kwargs).build_head(emb, 3)


def test_losspred_order_needs_an_even_batch(tmp_path):
  from keras_unc import config
  from keras_unc.training import trainer as train_lib

  assert URL().batch_multiple == 2 and URL(loss="riskpred").batch_multiple == 1
  config.parse(["testing/tiny.gin"], ["train.batch_size = 31", "train.method = @URL()"])
  with pytest.raises(
    ValueError, match="Global batch size 31 is not divisible by 2 .*method 'url'.*multiple of 2"
  ):
    train_lib.train(str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


TRAIN = [
  "train.total_steps = 12",
  "train.eval_every = 12",
  "train.checkpoint_every = 12",
  "train.evaluators = [@ClassificationEvaluator()]",
  "train.export_at_end = False",
  "URL.unc_width = 16",
  "URL.unc_depth = 2",
  "URL.mc_samples = 4",
]


@pytest.mark.parametrize(
  "params",
  [
    ["train.method = @URL()", "URL.unc_start_value = 0.5"],
    [
      "train.method = 'url'",
      "URL.module = 'embed_norm'",
      "URL.loss = 'infonce'",
      "URL.ssl = True",
      "URL.inv_temp = 10.0",
      "URL.unc_start_value = 0.0",
      "train.preprocess = \"views(2, ['inception_crop(8)', 'flip_lr'])|flatten_views\"",
    ],
  ],
  ids=["losspred_order", "infonce_two_views"],
)
def test_trains_through_the_one_trainer(params, tmp_path):
  result = run_inprocess(tmp_path, params=TRAIN + params)
  assert result["step"] == 12 and np.isfinite(result["metrics"]["test/accuracy"])
  net = result["network"]
  x = np.round(load_digits().images[:8] * 255 / 16)[..., None].astype("float32")
  out = net(x, training=False)
  representation, uncertainty = out["embedding"], out["uncertainty"]
  assert representation.shape == (8, 16) and uncertainty.shape == (8,)
  assert np.all(np.isfinite(np.asarray(uncertainty)))
  rescale = net.get_layer("uncertainty")
  if "URL.unc_start_value = 0.5" in params:  # Measured on the first 10 training batches.
    assert float(rescale.seen) == 10.0 and float(rescale.scale) != 1.0
  else:
    assert float(rescale.seen) == 0.0 and float(rescale.scale) == 1.0


def test_trained_pred_net_uncertainty_predicts_the_loss():
  """Head-only URL (pred-net + losspred_order) on digit pixels: on held-out digits its
  uncertainty ranks the cross-entropy (Spearman) and separates errors (R-AUROC-style)."""
  data = load_digits()
  x, y = (data.data / 16.0).astype("float32"), data.target
  rng = np.random.default_rng(0)
  order = rng.permutation(len(x))
  train, test = order[:1200], order[1200:]
  keras.utils.set_random_seed(0)
  method = URL(unc_width=32, unc_depth=2, unc_start_value=0.0)
  inp = keras.Input((64,))
  net = keras.Model(inp, method.build_head(inp, 10))
  optimizer = keras.optimizers.Adam(3e-3)

  @tf.function
  def step(xb, yb):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(method.loss(yb, net(xb, training=True)))
    optimizer.apply_gradients(
      zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
    )

  for _ in range(400):
    batch = rng.choice(train, 64, replace=False)
    step(x[batch], y[batch])
  out = net(x[test])
  probs, unc = np.asarray(out["probs"]), np.asarray(out["uncertainty"])
  ce = -np.log(probs[np.arange(len(test)), y[test]] + 1e-12)
  correct = probs.argmax(-1) == y[test]
  assert correct.mean() > 0.85
  assert spearmanr(unc, ce).correlation > 0.5  # Measured 0.75.
  assert roc_auc_score(correct, -unc) > 0.75  # Measured 0.85.


def test_url_is_registered():
  assert methods.METHODS["url"] is URL
