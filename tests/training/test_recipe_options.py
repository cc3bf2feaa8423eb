"""Training options the published recipes need: gradient accumulation (with our train step,
lr multipliers and resume), coupled L2, the BatchEnsemble fast-weight lr multiplier, and the
recipe batch / topology guard."""

import re

import gin
import keras
import numpy as np
import pytest

from keras_unc import config
from keras_unc.layers.batch_ensemble import Conv2DBatchEnsemble, DenseBatchEnsemble
from keras_unc.methods import Deterministic
from keras_unc.runtime import checkpoints
from keras_unc.training import optim
from keras_unc.training.layerwise import multiplier_for
from keras_unc.training.network import build_network
from keras_unc.training.train_model import TrainModel
from tests.e2e.helpers import run_inprocess, run_stopped

B, N, CLASSES = 4, 3, 5


def _net(seed=0):
  """Dense-only network in the output convention (no BatchNorm, no dropout: the forward
  pass of a batch is the same whether it is split or not)."""
  keras.utils.set_random_seed(seed)
  method = Deterministic()
  images = keras.Input((3, 3, 1))
  x = keras.layers.Dense(6, activation="tanh", name="hidden")(keras.layers.Flatten()(images))
  return keras.Model(images, method.build_head(x, CLASSES)), method


def _data(n):
  rng = np.random.default_rng(0)
  return rng.normal(size=(n, 3, 3, 1)).astype("float32"), rng.integers(0, CLASSES, n)


def _train(batch, steps, x, y, coupled_l2=0.0, **opt):
  net, method = _net()
  model = TrainModel(net, method, coupled_l2=coupled_l2)
  total = steps * opt.get("gradient_accumulation_steps", 1)
  optimizer = optim.make_optimizer(
    total, name="sgd", learning_rate=0.5, decay="constant", weight_decay=0.0, **opt
  )
  model.compile(optimizer=optimizer)
  model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
  return model


@pytest.mark.parametrize(
  "extra",
  [
    dict(momentum=0.0),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, lr_multipliers={"^hidden/": 0.3}),
    dict(momentum=0.9, coupled_l2=0.05),
  ],
  ids=["plain", "nesterov", "lr_multipliers", "coupled_l2"],
)
def test_accumulated_steps_equal_one_big_batch(extra):
  # 2 updates: N accumulated batches of B twice == 2 steps of batch N*B (momentum carries
  # over, so the accumulators must reset between updates).
  x, y = _data(2 * N * B)
  accumulated = _train(B, 2, x, y, gradient_accumulation_steps=N, **extra)
  big = _train(N * B, 2, x, y, **extra)
  assert int(accumulated.optimizer.iterations.numpy()) == 2 * N  # Forward passes.
  assert int(big.optimizer.iterations.numpy()) == 2
  for a, b in zip(accumulated.network.weights, big.network.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
  fresh, _ = _net()
  moved = max(
    np.abs(a.numpy() - f.numpy()).max() for a, f in zip(big.network.weights, fresh.weights)
  )
  assert moved > 1e-3  # The updates are not trivially zero.


def test_accumulation_is_not_a_bigger_batch_per_step():
  # Fails if accumulation applied every forward pass (the equality above would then break).
  x, y = _data(N * B)
  once = _train(B, 1, x, y, gradient_accumulation_steps=N)
  plain = _train(B, N, x, y)
  diff = max(np.abs(a.numpy() - b.numpy()).max() for a, b in zip(once.weights, plain.weights))
  assert diff > 1e-4


def test_schedule_counts_updates_under_accumulation():
  opt = optim.make_optimizer(
    12,
    name="sgd",
    learning_rate=1.0,
    warmup_steps=2,
    decay="constant",
    gradient_accumulation_steps=3,
  )
  schedule = opt._learning_rate
  assert schedule.total_steps == 4
  # Forward passes 0-2 are update 0 (lr 0), 3-5 update 1 (lr 0.5), then 1.
  np.testing.assert_allclose(
    [float(schedule(t)) for t in range(9)], [0, 0, 0, 0.5, 0.5, 0.5, 1, 1, 1], atol=1e-7
  )
  with pytest.raises(ValueError, match="not a multiple of make_optimizer.gradient_accumulation"):
    optim.make_optimizer(10, gradient_accumulation_steps=3)
  with pytest.raises(ValueError, match=">= 1"):
    optim.make_optimizer(10, gradient_accumulation_steps=0)


ACCUM = [
  "make_optimizer.gradient_accumulation_steps = 3",
  "make_optimizer.name = 'sgd'",
  "make_optimizer.momentum = 0.9",
  "train.total_steps = 12",
  "train.checkpoint_every = 4",
  "train.eval_every = 12",
  "train.evaluators = []",
  "train.export_at_end = False",
]


def test_accumulation_resumes_mid_cycle(tmp_path):
  # Checkpoints every 4 forward passes land inside the 3-pass accumulation cycles; the
  # accumulators are optimizer variables, so stopping at pass 4 and rerunning ends with the
  # weights of the uninterrupted run.
  ref = run_inprocess(tmp_path / "ref", "train", ACCUM)
  assert ref["step"] == 12
  stopped = run_stopped(tmp_path / "res", ACCUM)
  assert stopped["step"] == 4
  _, arrays, _ = checkpoints.Checkpointer(str(tmp_path / "res" / "checkpoints")).load_latest()
  opt_arrays = [arrays[k] for k in arrays if k.startswith("optimizer/")]
  assert any(a.ndim and np.abs(a).max() > 0 for a in opt_arrays)  # Accumulated gradients.
  res = run_inprocess(tmp_path / "res", "train", ACCUM)
  assert res["step"] == 12
  for a, b in zip(ref["network"].weights, res["network"].weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_coupled_l2_gradient_by_hand():
  # Gradient of the TrainModel loss with coupled_l2 = gradient without it + 2 l2 w on the
  # kernels and biases only (BatchNorm gamma/beta untouched), as ub's `l2 * ||w||^2`.
  l2 = 0.03
  keras.utils.set_random_seed(0)
  method = Deterministic()
  images = keras.Input((3, 3, 1))
  x = keras.layers.Dense(6, name="hidden")(keras.layers.Flatten()(images))
  x = keras.layers.BatchNormalization(name="bn")(x)
  net = keras.Model(images, method.build_head(x, CLASSES))
  x_np, y_np = _data(8)
  import tensorflow as tf

  def grads(model):
    with tf.GradientTape() as tape:
      out = model(x_np, training=False)
      loss = model.compute_loss(x=x_np, y=y_np, y_pred=out)
    return loss, tape.gradient(loss, model.trainable_weights)

  plain = TrainModel(net, method)
  loss0, g0 = grads(plain)
  regularised = TrainModel(net, method, coupled_l2=l2)
  loss1, g1 = grads(regularised)
  chosen = {v.path for v in regularised.coupled_l2_variables()}
  assert chosen == {"hidden/kernel", "hidden/bias", "head/kernel", "head/bias"}, chosen
  sq = sum(float(np.sum(v.numpy() ** 2)) for v in regularised.trainable_weights if v.path in chosen)
  np.testing.assert_allclose(float(loss1), float(loss0) + l2 * sq, rtol=1e-6)
  for v, a, b in zip(regularised.trainable_weights, g0, g1):
    want = a.numpy() + (2 * l2 * v.numpy() if v.path in chosen else 0.0)
    np.testing.assert_allclose(b.numpy(), want, rtol=1e-5, atol=1e-7, err_msg=v.path)
  with pytest.raises(ValueError, match="matches no trainable variable"):
    TrainModel(net, method, coupled_l2=l2, coupled_l2_pattern="nothing_here").l2_norm_squared()
  with pytest.raises(ValueError, match=">= 0"):
    TrainModel(net, method, coupled_l2=-1.0)


# --- BatchEnsemble fast-weight learning-rate multiplier (ub: 0.25) ----------------------

TINY_RESNET = ["build_network.image_size = 32", "resnet.width = 0.03125", "resnet.stem = 'cifar'"]


@pytest.mark.parametrize("recipe", ["batchensemble", "be_sngp"])
def test_be_fast_weight_multiplier_selects_only_fast_weights(recipe):
  gin.clear_config()
  config.parse([f"experiments/ub_imagenet/{recipe}.gin"], TINY_RESNET)
  multipliers = tuple(config.value("make_optimizer.lr_multipliers").items())
  assert [m for _, m in multipliers] == [0.25]
  method = config.value("train.method").scoped_configurable_fn()
  keras.utils.set_random_seed(0)
  net = build_network(method, 10, (32, 32, 3))
  gin.clear_config()
  be_layers = [
    layer
    for layer in net._flatten_layers(include_self=False, recursive=True)
    if isinstance(layer, (DenseBatchEnsemble, Conv2DBatchEnsemble))
  ]
  assert len(be_layers) >= 53  # ResNet-50: 53 convolutions (+ the head for batchensemble)
  fast = {w.path for layer in be_layers for w in (layer.alpha, layer.gamma)}
  paths = [v.path for v in net.trainable_weights]
  chosen = {p for p in paths if multiplier_for(p, multipliers) == 0.25}
  assert chosen == fast
  others = {multiplier_for(p, multipliers) for p in paths if p not in fast}
  assert others == {1.0}
  assert any(re.search(r"bn\d*/gamma$", p) for p in paths)  # BatchNorm gammas exist, unmatched
  # ub's L2 ('kernel' or 'bias' in the name): kernels and biases, no fast weights, no BN.
  pattern = re.compile(config.value("train.coupled_l2_pattern"))
  l2 = {p for p in paths if pattern.search(p)}
  # ub's test on the variable's own name (e.g. the GP's `output_kernel` too).
  ub_l2 = {p for p in paths if "kernel" in p.split("/")[-1] or "bias" in p.split("/")[-1]}
  assert l2 == ub_l2 and any(p.endswith("/kernel") for p in l2)
  assert not l2 & fast


# --- Recipe batch / topology guard ---------------------------------------------------------


def test_batch_plan_keeps_the_global_batch_over_replicas():
  for replicas in (1, 2, 8):
    plan = optim.batch_plan(1024, replicas, recipe_global_batch=1024)
    assert plan == {"per_replica": 1024 // replicas, "global_batch": 1024, "lr_scale": 1.0}
  plan = optim.batch_plan(96, 4, accumulation_steps=21, recipe_global_batch=2016)
  assert plan == {"per_replica": 24, "global_batch": 2016, "lr_scale": 1.0}


def test_batch_plan_not_divisible_names_the_fix():
  with pytest.raises(ValueError, match=r"not divisible by 8 .*multiple of 8, e.g. 96"):
    optim.batch_plan(100, 8, method_name="deterministic")
  with pytest.raises(ValueError, match=r"not divisible by 4 \(2 replicas x 2"):
    optim.batch_plan(6, 2, batch_multiple=2)


def test_batch_plan_refuses_another_batch_with_the_fix():
  with pytest.raises(ValueError, match=r"256 examples per update.*global batch of 1024") as err:
    optim.batch_plan(256, 1, recipe_global_batch=1024)
  assert "gradient_accumulation_steps=1" in str(err.value)  # keep 1024 x 1
  assert "batch 512 x 2" in str(err.value)  # or accumulate
  assert "allow_recipe_change=True" in str(err.value)


def test_accumulation_under_a_distribution_strategy_is_refused_with_the_fix():
  # Keras 3 cannot apply accumulated gradients under tf.distribute (merge_call in a cond).
  assert optim.batch_plan(96, 1, accumulation_steps=21)["global_batch"] == 2016
  with pytest.raises(ValueError, match=r"default strategy.*train.batch_size=2016 and make_opt"):
    optim.batch_plan(96, 2, accumulation_steps=21, distributed=True)


def test_trainer_refuses_accumulation_on_one_device_strategy(tmp_path):
  with pytest.raises(ValueError, match="needs TensorFlow's default strategy"):
    run_inprocess(
      tmp_path,
      "train",
      [
        "get_strategy.name = 'one_device'",
        "make_optimizer.gradient_accumulation_steps = 2",
        "train.total_steps = 2",
      ],
    )


@pytest.mark.parametrize("rule,scale", [("linear", 0.25), ("sqrt", 0.5), ("none", 1.0)])
def test_batch_plan_allowed_change_rescales_lr(rule, scale):
  plan = optim.batch_plan(
    256, 2, recipe_global_batch=1024, recipe_lr_scaling=rule, allow_recipe_change=True
  )
  assert plan == {"per_replica": 128, "global_batch": 256, "lr_scale": scale}
  with pytest.raises(ValueError, match="linear, sqrt, none"):
    optim.batch_plan(256, 1, recipe_global_batch=1024, recipe_lr_scaling="cube")


def test_trainer_applies_the_recipe_guard(tmp_path, caplog):
  params = [
    "train.recipe_global_batch = 64",
    "train.total_steps = 2",
    "train.evaluators = []",
    "train.export_at_end = False",
  ]
  with pytest.raises(ValueError, match="train.recipe_global_batch"):
    run_inprocess(tmp_path / "refused", "train", params)  # tiny.gin: batch 32
  caplog.set_level("INFO")
  result = run_inprocess(
    tmp_path / "allowed",
    "train",
    params + ["train.allow_recipe_change = True", "train.recipe_lr_scaling = 'linear'"],
  )
  assert result["step"] == 2
  text = caplog.text
  assert "32 examples per update instead of the recipe's 64" in text
  assert "peak learning rate 0.0015" in text  # tiny.gin's 3e-3 x 32 / 64
  ok = run_inprocess(
    tmp_path / "accumulated",
    "train",
    params[:1]
    + params[2:]
    + ["train.total_steps = 4", "make_optimizer.gradient_accumulation_steps = 2"],
  )
  assert ok["step"] == 4


def test_training_a_network_without_trainable_weights_is_refused():
  import keras

  from keras_unc.training.trainer import check_trainable

  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  check_trainable(model, "train")  # Trainable: fine.
  model.trainable = False
  with pytest.raises(ValueError, match="no trainable weights"):
    check_trainable(model, "train_and_eval")
  check_trainable(model, "eval")  # Evaluation needs no trainable weights.
