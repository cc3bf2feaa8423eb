"""NaN/Inf injected into a batch, into gradients and into parameters is caught INSIDE the
XLA-compiled train step (`tf.debugging.check_numerics` is silent under `jit_compile=True`),
with the `stop` and `skip_batch` policies."""

import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from keras_unc import config
from keras_unc.data import get_source
from keras_unc.methods import Deterministic
from keras_unc.runtime import checkpoints
from keras_unc.training import callbacks as cbs
from keras_unc.training import trainer as train_lib
from keras_unc.training.train_model import (
  NONFINITE_GRADS,
  NONFINITE_LOSS,
  NONFINITE_PARAMS,
  TrainModel,
)
from tests.e2e.helpers import REPO

BATCH, BAD = 32, 3  # The 4th batch (step 4) is the poisoned one.


@pytest.fixture(autouse=True)
def _xla_allowed():
  # Keras silently turns jit_compile off while op determinism is on (other tests enable
  # it process-wide): switch it off so these tests really run XLA.
  was = tf_config.is_op_determinism_enabled()
  tf_config.disable_op_determinism()
  yield
  if was:
    tf_config.enable_op_determinism()


class _PoisonGradLoss(Deterministic):
  """The deterministic loss, whose gradient is NaN (loss stays finite) while `flag` is 1."""

  def __init__(self, flag):
    super().__init__()
    self.flag = flag

  def loss(self, labels, outputs):
    flag = self.flag

    @tf.custom_gradient
    def poison(x):
      def grad(dy):
        return tf.where(tf.cast(flag, tf.bool), tf.fill(tf.shape(dy), np.nan), dy)

      return tf.identity(x), grad

    return poison(super().loss(labels, outputs))


def _model(policy, method=None, jit_compile=True, steps_per_execution=1):
  """A small network in the output convention (fast to XLA-compile) in `TrainModel`."""
  keras.utils.set_random_seed(0)
  method = method or Deterministic()
  images = keras.Input((8, 8, 1))
  x = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(images))
  x = keras.layers.BatchNormalization()(x)  # Float layer state that skip_batch restores.
  net = keras.Model(images, method.build_head(x, 10))
  model = TrainModel(net, method, nan_policy=policy)
  model.compile(
    optimizer=keras.optimizers.AdamW(1e-3),
    jit_compile=jit_compile,
    steps_per_execution=steps_per_execution,
  )
  assert model.jit_compile == jit_compile, "XLA is off: the test would not test what it claims"
  return model


def _batches(n=6, nan_batch=None, value=np.nan):
  x, y = get_source("digits").arrays("train")
  x, y = x[: n * BATCH].astype("float32"), y[: n * BATCH]
  if nan_batch is not None:
    x[nan_batch * BATCH + 5, 3, 4, 0] = value
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


class _Recorder(keras.callbacks.Callback):
  """Snapshots weights and optimizer slots (not the step counter) after every batch."""

  def __init__(self, on_batch=None):
    super().__init__()
    self.states, self.on_batch = [], on_batch

  def on_train_batch_end(self, batch, logs=None):
    opt = self.model.optimizer
    self.states.append(
      [v.numpy().copy() for v in self.model.network.variables]
      + [v.numpy().copy() for v in opt.variables if v is not opt.iterations]
    )
    if self.on_batch:
      self.on_batch(self.model, batch)


def _fit(model, data, *extra):
  guard = cbs.NanGuard()
  rec = _Recorder()
  # A repeated dataset and a step count, as in the trainer: a mirrored run that hits the
  # end of its data can leave a collective pending on one replica for the next test.
  model.fit(
    data.repeat(),
    epochs=1,
    steps_per_epoch=6,
    verbose=0,
    callbacks=[guard, rec, *extra],
    shuffle=False,
  )
  return guard, rec


def _same(a, b):
  return all(np.array_equal(u, v, equal_nan=True) for u, v in zip(a, b))


@pytest.mark.parametrize("steps_per_execution", [1, 5])
def test_stop_on_nonfinite_batch_names_step(steps_per_execution):
  model = _model("stop", steps_per_execution=steps_per_execution)
  guard, rec = _fit(model, _batches(nan_batch=BAD, value=np.inf))
  assert guard.bad_step == BAD + 1 and guard.bad_what & NONFINITE_LOSS
  # Stopped after the execution holding the bad step (steps 1-5 when N = 5: the device loop
  # reads nothing back between steps); the guard still names the first bad step.
  end = -(-(BAD + 1) // steps_per_execution) * steps_per_execution
  assert int(model.optimizer.iterations.numpy()) == end
  assert len(rec.states) == end // steps_per_execution


def test_skip_batch_leaves_weights_and_optimizer_unchanged():
  model = _model("skip_batch")
  guard, rec = _fit(model, _batches(nan_batch=BAD))
  assert guard.bad_step is None and int(model.skipped_batches.numpy()) == 1
  assert _same(rec.states[BAD], rec.states[BAD - 1])  # The skipped step changed nothing.
  assert not _same(rec.states[BAD + 1], rec.states[BAD])  # Later steps train on...
  assert all(np.all(np.isfinite(w)) for w in rec.states[-1] if w.dtype.kind == "f")
  assert int(model.optimizer.iterations.numpy()) == 6  # ...and the data position advanced.


@pytest.mark.parametrize("policy", ["stop", "skip_batch"])
def test_nonfinite_gradients_with_finite_loss(policy):
  flag = tf.Variable(0, dtype=tf.int32)
  model = _model(policy, _PoisonGradLoss(flag))
  arm = keras.callbacks.LambdaCallback(
    on_train_batch_end=lambda batch, logs: flag.assign(int(batch + 1 == BAD))
  )
  guard, rec = _fit(model, _batches(), arm)
  if policy == "stop":
    assert guard.bad_step == BAD + 1
    assert guard.bad_what == NONFINITE_GRADS | NONFINITE_PARAMS  # Loss was finite.
  else:
    assert guard.bad_step is None and int(model.skipped_batches.numpy()) == 1
    assert _same(rec.states[BAD], rec.states[BAD - 1])


def test_nonfinite_parameters_stop_even_when_skipping():
  """`skip_batch` cannot skip past broken weights (the stop policy: trainer test below)."""

  def poison(model, batch):
    if batch + 1 == BAD:
      kernel = model.network.trainable_variables[0]
      kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0] * len(kernel.shape)], [np.nan]))

  model = _model("skip_batch")
  guard, _ = _fit(model, _batches(), _Recorder(poison))
  assert guard.bad_step == BAD + 1 and guard.bad_what & NONFINITE_PARAMS


def test_trainer_stops_keeps_last_good_checkpoint(tmp_path):
  """Through `train()` with XLA: NaN parameters at step 15; ckpt-10 stays, finite."""

  class Poison(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      if int(self.model.optimizer.iterations.numpy()) == 15:
        var = self.model.network.trainable_variables[-1]
        var.assign(tf.fill(var.shape, np.inf))

  hook = Poison()
  gin.clear_config()
  config.parse(
    ["testing/tiny.gin"],
    ["train.deterministic_ops=False", "train.jit_compile=True", "train.total_steps=30"],
    finalize=False,
  )
  gin.bind_parameter("train.callbacks", [hook])
  assert not tf_config.is_op_determinism_enabled()  # So Keras keeps jit_compile=True.
  with pytest.raises(
    cbs.NonFiniteLossError, match=r"Non-finite training .*parameters.* at step 16.*ckpt-000000010"
  ):
    train_lib.train(str(tmp_path), "train")
  ckpt = checkpoints.Checkpointer(os.path.join(tmp_path, "checkpoints"))
  assert ckpt.steps() == [10]
  _, arrays, _ = ckpt.load_latest()
  assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")


_MIRRORED = """
import json, sys
from keras_unc.runtime import distribute
distribute.configure_cpu_devices(2)
import tensorflow as tf
from tests.reliability import test_nan_policy as t
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
  model = t._model(sys.argv[1], jit_compile=False)
guard, rec = t._fit(model, t._batches(nan_batch=t.BAD))
print(json.dumps({"bad_step": guard.bad_step, "bad_what": guard.bad_what,
                  "skipped": int(model.skipped_batches.numpy()),
                  "unchanged": t._same(rec.states[t.BAD], rec.states[t.BAD - 1]),
                  "later_trains": len(rec.states) > t.BAD + 1 and not t._same(
                      rec.states[t.BAD + 1], rec.states[t.BAD]),
                  "finite": all(bool(np.isfinite(w).all()) for w in rec.states[-1]
                                if w.dtype.kind == "f")}))
"""


@pytest.mark.parametrize("policy", ["skip_batch", "stop"])
def test_mirrored_strategy(policy):
  """Two replicas: the decision is shared (one replica's NaN skips or stops both). Run in a
  fresh process (MirroredStrategy collectives of one test must not meet another's), and
  without XLA: Keras cannot XLA-compile a mirrored step over logical CPU devices."""
  out = subprocess.run(
    [sys.executable, "-c", "import numpy as np\n" + _MIRRORED, policy],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, PYTHONPATH=REPO),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  if policy == "stop":  # (relu may turn the NaN input into 0: a finite loss, NaN grads.)
    assert got["bad_step"] == BAD + 1 and got["bad_what"] & (NONFINITE_LOSS | NONFINITE_GRADS)
    return
  assert got["bad_step"] is None and got["skipped"] == 1
  assert got["unchanged"] and got["later_trains"] and got["finite"]
