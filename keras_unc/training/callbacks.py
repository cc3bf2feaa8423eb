"""Callbacks of the one trainer: checkpoints, NaN guard, TensorBoard scalars, evaluation.

Steps come from `optimizer.iterations`, so summaries and checkpoints keep counting
across a resume (Keras' own TensorBoard callback restarts at 0 on every `fit`).
"""

import logging
import math
import time

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


def _step(model):
  return int(model.optimizer.iterations.numpy())


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss."""


class NanGuard(keras.callbacks.Callback):
  """Stops training at the first non-finite step, before anything is saved.

  Reads the flags `train_model.TrainModel` sets inside the train step (loss, gradients,
  parameters; valid under XLA too), falling back to the logged loss; logs the batches
  that `nan_policy="skip_batch"` skipped. With `steps_per_execution > 1` it runs once per
  execution; the step it reports is still exact (recorded by the step itself; the device
  loop of `TrainModel.make_train_function` runs to the end of that execution, and nothing
  is saved after it).
  """

  def __init__(self):
    super().__init__()
    self.bad_step = None
    self.bad_what = 1  # train_model.NONFINITE_LOSS
    self.skipped = 0

  def on_train_batch_end(self, batch, logs=None):
    flagged = getattr(self.model, "nonfinite_step", None)
    if flagged is not None and int(flagged.numpy()) >= 0:
      self.bad_step = int(flagged.numpy())
      self.bad_what = int(self.model.nonfinite_what.numpy())
      self.model.stop_training = True
      return
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
      self.bad_step = _step(self.model)
      self.model.stop_training = True
    skipped = getattr(self.model, "skipped_batches", None)
    if skipped is not None and int(skipped.numpy()) > self.skipped:
      self.skipped = int(skipped.numpy())
      log.warning(
        "Skipped a non-finite batch by step %d (%d skipped so far): nan_policy=skip_batch "
        "left the weights and optimizer state unchanged.",
        _step(self.model),
        self.skipped,
      )


class Checkpointing(keras.callbacks.Callback):
  """Saves every `every` steps and at `total_steps`, never after a NaN."""

  def __init__(self, checkpointer, every, total_steps, nan_guard, network):
    super().__init__()
    self.checkpointer, self.every, self.total = checkpointer, every, total_steps
    self.nan_guard, self.network = nan_guard, network
    self.last_saved = None

  def on_epoch_end(self, epoch, logs=None):
    step = _step(self.model)
    if self.nan_guard.bad_step is None and (step % self.every == 0 or step >= self.total):
      self.checkpointer.save(step, self.network, self.model.optimizer)
      self.last_saved = step


class ScalarLogger(keras.callbacks.Callback):
  """Writes training loss, accuracy, learning rate and images/s to TensorBoard every
  `every` steps: at the end of the batch (one execution of `steps_per_execution` steps)
  that reaches or passes each multiple of `every`, with that batch's step.
  """

  def __init__(self, writer, every, global_batch_size):
    super().__init__()
    self.writer, self.every, self.batch = writer, every, global_batch_size
    self._t0 = self._s0 = None

  def on_train_begin(self, logs=None):
    self._t0, self._s0 = time.perf_counter(), _step(self.model)

  def on_train_batch_end(self, batch, logs=None):
    step = _step(self.model)
    if step // self.every == self._s0 // self.every:
      return  # No multiple of `every` in (last logged step, step].
    now = time.perf_counter()
    rate = (step - self._s0) * self.batch / max(now - self._t0, 1e-9)
    self._t0, self._s0 = now, step
    opt = self.model.optimizer
    with self.writer.as_default(step=step):
      for name, value in (logs or {}).items():
        tf.summary.scalar(f"train/{name}", float(value))
      tf.summary.scalar("train/learning_rate", float(opt.learning_rate.numpy()))
      tf.summary.scalar("train/images_per_second", rate)


class Evaluation(keras.callbacks.Callback):
  """Runs the evaluators every `every` steps and at the end of training (`final=False`:
  not at the end, where the trainer evaluates after a post-training fit, e.g. Laplace).
  """

  def __init__(self, run_eval, every, total_steps, final=True):
    super().__init__()
    self.run_eval, self.every, self.total = run_eval, every, total_steps
    self.final = final

  def on_epoch_end(self, epoch, logs=None):
    step = _step(self.model)
    if step >= self.total:
      if self.final:
        self.run_eval(step)
    elif step % self.every == 0:
      self.run_eval(step)
