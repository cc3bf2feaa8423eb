"""SIGTERM (a preempted TPU VM, a cluster scheduler, `kill`) saves a checkpoint, then exits.

`install(strategy, checkpointer, network, nan_guard)` returns the Keras callbacks that
make the current strategy preemption-safe. One process (default, one-device, mirrored):
`SigtermCheckpoint` turns SIGTERM into a flag; the running step finishes, a checkpoint
of that step is written with the trainer's own `checkpoints.Checkpointer`, training
stops and `train()` raises `TrainingPreempted` ("rerun the same command to resume").
A multi-worker job uses `tf.distribute.experimental.PreemptionCheckpointHandler`
(`ClusterPreemptionCheckpoint`): SIGTERM on any worker makes every worker save at the
same step. TPU runs are one client process (a Cloud TPU VM) and use `SigtermCheckpoint`.
"""

import atexit
import logging
import os
import shutil
import signal
import tempfile
import threading

import keras
import tensorflow as tf

from keras_unc.runtime import distribute

log = logging.getLogger(__name__)

# Exit status of a preempted run: 128 + SIGTERM, what a shell reports for a TERM death.
EXIT_CODE = 128 + signal.SIGTERM


class TrainingPreempted(RuntimeError):
  """Training stopped on SIGTERM after saving a checkpoint."""

  def __init__(self, step, path):
    self.step, self.path = step, path
    where = f"checkpoint saved to {path}" if path else "no checkpoint could be saved"
    super().__init__(
      f"Preempted (SIGTERM) at step {step}; {where}. Rerun the same command to resume from it."
    )


class SigtermCheckpoint(keras.callbacks.Callback):
  """Finishes the current step on SIGTERM, saves it, and stops `fit`.

  Args:
    checkpointer: the trainer's `checkpoints.Checkpointer`.
    network: the network whose variables are saved (with the optimizer's).
    nan_guard: `callbacks.NanGuard`; nothing is saved after a non-finite step.
  """

  def __init__(self, checkpointer, network, nan_guard=None):
    super().__init__()
    self.checkpointer, self.network, self.nan_guard = checkpointer, network, nan_guard
    self.requested = threading.Event()
    self.preempted_step = self.saved_path = None
    self._previous = None

  def _on_sigterm(self, signum, frame):
    # Only a flag: saving here could interrupt a half-run TF step or a checkpoint write.
    self.requested.set()

  def on_train_begin(self, logs=None):
    if threading.current_thread() is threading.main_thread():  # signal() needs it.
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def on_train_end(self, logs=None):
    if self.requested.is_set() and self.preempted_step is None:
      self._save()  # SIGTERM during the last evaluation or save.
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def on_train_batch_end(self, batch, logs=None):
    if self.requested.is_set() and self.preempted_step is None:
      self._save()
      self.model.stop_training = True

  def _save(self):
    step = int(self.model.optimizer.iterations.numpy())
    self.preempted_step = step
    if self.nan_guard is not None and self.nan_guard.bad_step is not None:
      return  # Never save non-finite weights; the last good checkpoint stays newest.
    if step in self.checkpointer.steps():
      self.saved_path = self.checkpointer.path(step)
    else:
      self.saved_path = self.checkpointer.save(step, self.network, self.model.optimizer)
    log.warning("SIGTERM received: checkpoint of step %d saved to %s.", step, self.saved_path)

  def check(self):
    """Raises `TrainingPreempted` if SIGTERM stopped training."""
    if self.preempted_step is not None:
      raise TrainingPreempted(self.preempted_step, self.saved_path)


class ClusterPreemptionCheckpoint(SigtermCheckpoint):
  """Multi-worker: SIGTERM on any worker makes every worker save at the same step.

  `tf.distribute.experimental.PreemptionCheckpointHandler` agrees on that step through
  the cluster's coordination service. Its `TerminationConfig` is wired to the trainer:
  the termination watcher is this callback's SIGTERM flag, `save_fn` saves with the
  trainer's checkpointer (only the chief's lands in the workdir; the others write their
  scratch folders) and `exit_fn` stops `fit` (then `train()` raises `TrainingPreempted`)
  instead of `sys.exit`. The handler's own `tf.train.Checkpoint` is an empty placeholder.

  Args:
    strategy: the `tf.distribute.MultiWorkerMirroredStrategy`.
    checkpointer, network, nan_guard: as for `SigtermCheckpoint`.
  """

  def __init__(self, strategy, checkpointer, network, nan_guard=None):
    super().__init__(checkpointer, network, nan_guard)
    self.strategy = strategy
    self.handler = None

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)  # SIGTERM only sets `self.requested`.
    config = tf.distribute.experimental.TerminationConfig(
      termination_watcher_fn=self.requested.is_set,
      exit_fn=self._stop,
      grace_period=0,
      save_fn=self._save,
    )
    scratch = tempfile.mkdtemp(prefix="keras_unc-preemption-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
      self.strategy.cluster_resolver,
      tf.train.Checkpoint(),
      checkpoint_dir=os.path.join(scratch, "unused"),
      termination_config=config,
    )
    platform = getattr(self.handler, "_platform_device", None)
    if getattr(platform, "name", "") in ("GCE_CPU", "GCE_TPU"):
      log.warning(
        "TensorFlow disables PreemptionCheckpointHandler on %s VMs: a SIGTERM "
        "there stops the job without a coordinated save (the last periodic "
        "checkpoint is used).",
        platform.name,
      )

  def on_train_batch_end(self, batch, logs=None):
    # Every worker calls this once per step: the handler's step counts stay aligned.
    self.handler.save_checkpoint_if_preempted()

  def on_train_end(self, logs=None):
    super().on_train_end(logs)
    self.handler = None  # Its __del__ stops the watcher threads.

  def _stop(self):
    self.model.stop_training = True


def install(strategy, checkpointer, network, nan_guard=None):
  """Returns the preemption callbacks for `strategy` (see the module docstring).

  Every returned callback has `check()`, called after `fit`, which raises
  `TrainingPreempted` when training was stopped by a preemption.

  One process (default, one-device, mirrored and TPU strategies: a Cloud TPU VM runs
  one client, and TensorFlow's handler is inert on GCE TPU VMs) saves on its own
  SIGTERM; a multi-worker job uses `ClusterPreemptionCheckpoint`.
  """
  if distribute.task(strategy)[0] is not None:
    return [ClusterPreemptionCheckpoint(strategy, checkpointer, network, nan_guard)]
  return [SigtermCheckpoint(checkpointer, network, nan_guard)]
