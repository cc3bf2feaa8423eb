"""`TrainModel`: wraps the network for `fit`, taking the per-example loss from the method.

Its train step checks loss, gradients and parameters for NaN/Inf (also under XLA) and
applies the NaN policy. With `steps_per_execution = N > 1` its train function runs N
steps in one `tf.function` on every strategy (`make_train_function`).
"""

import inspect
import math
import re

import keras
import tensorflow as tf
from keras import ops
from keras.src.backend.tensorflow.trainer import reduce_per_replica

from keras_unc.training.optim import loss_scale_variables

NAN_POLICIES = ("stop", "skip_batch")
# Variables uncertainty-baselines' coupled L2 applies to (`'kernel' in var.name or 'bias' in
# var.name`), as a regex on variable paths.
COUPLED_L2_PATTERN = "kernel|bias"
NONFINITE_LOSS, NONFINITE_GRADS, NONFINITE_PARAMS = 1, 2, 4


def describe_nonfinite(bits):
  """'loss, gradients' for a NONFINITE_* bit mask."""
  names = [
    n
    for b, n in (
      (NONFINITE_LOSS, "loss"),
      (NONFINITE_GRADS, "gradients"),
      (NONFINITE_PARAMS, "parameters"),
    )
    if int(bits) & b
  ]
  return ", ".join(names) or "loss"


def _all_finite(tensors):
  flags = [
    tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None and t.dtype.is_floating
  ]
  return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def _all_replicas(*flags, after=()):
  # Every replica must decide alike (skip, stop): AND each flag over replicas, in one
  # all-reduce that runs `after` the optimizer's (collectives must run in the same order
  # on every replica).
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return flags
  with tf.control_dependencies(list(after)):
    local = 1.0 - tf.cast(tf.stack(flags), tf.float32)
  return tf.unstack(ctx.all_reduce(tf.distribute.ReduceOp.SUM, local) < 0.5)


def _unscale(loss):
  replicas = tf.distribute.get_strategy().num_replicas_in_sync
  return loss * replicas if replicas > 1 else loss


def _replica_scale(loss):
  # Keras all-reduces gradients with SUM across replicas: each replica's mean loss
  # is divided by the replica count so the update equals the global-batch mean's.
  replicas = tf.distribute.get_strategy().num_replicas_in_sync
  return loss / replicas if replicas > 1 else loss


class TrainModel(keras.Model):
  """`fit`-able wrapper: forwards to the network, loss from `method.loss`.

  Args:
    network: the functional network from `build_network`.
    method: the method supplying the per-example loss.
    nan_policy: "stop" or "skip_batch" for non-finite steps (see `train_step`).
    coupled_l2: adds `coupled_l2 * sum ||w||^2` over the trainable variables whose path
      matches `coupled_l2_pattern` to the loss (uncertainty-baselines' `l2` flag: its
      gradient `2 * coupled_l2 * w` goes through the optimizer, momentum included).
    coupled_l2_pattern: regex (`re.search` on variable paths); the default selects what
      uncertainty-baselines' `'kernel' in var.name or 'bias' in var.name` selects: kernels
      and biases, not BatchNorm/LayerNorm scales and offsets nor BatchEnsemble fast weights.
    total_steps: the run's `train.total_steps`, for the KL warm-up of methods with
      `kl_annealing` (`layer_loss_scale`); None turns the warm-up off.
  """

  def __init__(
    self,
    network,
    method,
    nan_policy="stop",
    coupled_l2=0.0,
    coupled_l2_pattern=COUPLED_L2_PATTERN,
    total_steps=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.total_steps = total_steps  # The run's train.total_steps (KL warm-up); None: unknown.
    if nan_policy not in NAN_POLICIES:
      raise ValueError(
        f"Unknown train.nan_policy {nan_policy!r}: choose one of "
        f"{', '.join(map(repr, NAN_POLICIES))}."
      )
    if coupled_l2 < 0:
      raise ValueError(f"train.coupled_l2={coupled_l2} must be >= 0 (0 = off).")
    self.network = network
    self.method = method
    self.coupled_l2 = float(coupled_l2)
    self.coupled_l2_pattern = re.compile(coupled_l2_pattern)
    method.attach(network)
    self.nan_policy = nan_policy
    self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
    # Non-finite bookkeeping, written inside the (possibly XLA-compiled) train step where
    # tf.debugging.check_numerics is silent: first bad step (-1: none), what was
    # non-finite (NONFINITE_* bits) and how many batches `skip_batch` dropped.
    counter = dict(trainable=False, aggregation="only_first_replica")
    self.nonfinite_step = keras.Variable(-1, dtype="int64", name="nonfinite_step", **counter)
    self.nonfinite_what = keras.Variable(0, dtype="int32", name="nonfinite_what", **counter)
    self.skipped_batches = keras.Variable(0, dtype="int64", name="skipped_batches", **counter)

  def call(self, images, training=False):
    return self.network(images, training=training)

  def fit(self, *args, **kwargs):
    """`keras.Model.fit`; with `steps_per_execution > 1` no execution crosses the end of an
    epoch (`steps_per_epoch`), so callbacks acting at epoch ends (checkpoints, evaluation)
    see the exact step, and a method callback acting every `every` steps between two
    executions (the GP precision reset) is refused unless it falls on an execution start.
    """
    args_of = inspect.signature(super().fit).bind(*args, **kwargs).arguments
    per_epoch = args_of.get("steps_per_epoch")
    if self.steps_per_execution > 1 and per_epoch:
      epochs = args_of.get("epochs", 1) - args_of.get("initial_epoch", 0)
      self._check_periods(int(self.optimizer.iterations.numpy()), per_epoch, epochs)
    self._epoch_position = (per_epoch, 0)  # (steps per epoch, steps run in this epoch)
    return super().fit(*args, **kwargs)

  def _check_periods(self, start, per_epoch, epochs):
    """Refuses a method callback period (`every`) whose steps fall inside an execution."""
    n = self.steps_per_execution
    for callback in self.method.callbacks():
      every = getattr(callback, "every", None)
      if not every:
        continue
      first = math.ceil(start / every) * every
      for at in range(first, start + epochs * per_epoch, every):
        if (at - start) % per_epoch % n:
          raise ValueError(
            f"train.steps_per_execution={n}: {type(callback).__name__} of {self.method.name} "
            f"acts every {every} steps (e.g. gp_head.reset_every) between two executions, "
            f"but step {at} falls inside one (epochs of {per_epoch} steps from step {start}). "
            f"Set train.steps_per_execution to a divisor of {math.gcd(every, per_epoch)}."
          )

  def _next_execution(self):
    """Steps of the next execution: `steps_per_execution`, cut at the end of the epoch."""
    per_epoch, done = getattr(self, "_epoch_position", (None, 0))
    n = self.steps_per_execution
    if per_epoch:
      n = min(n, per_epoch - done)
      self._epoch_position = (per_epoch, (done + n) % per_epoch)
    return n

  def make_train_function(self, force=False):
    """Keras' train function; with `steps_per_execution = N > 1`, a device loop of N replica
    steps (`strategy.run(train_step)` on `next(iterator)`, as uncertainty-baselines'
    `steps_per_loop`) in one `tf.function`, bit-identical to N single steps.

    Keras 3.15's own loop puts each step in a `tf.cond` (on `get_next_as_optional`), and a
    cross-replica collective inside a `tf.cond` branch fails under MirroredStrategy ("You
    must feed a value for placeholder tensor 'while/cond/Placeholder'"): every distributed
    train step all-reduces its gradients. This loop has no `cond`: the training input is
    infinite and `fit` asks for exact step counts (`_next_execution`). The loop reads
    nothing back from the device between steps (a condition on a device value would be a
    host round trip per step, what the loop exists to avoid): after a fatal non-finite
    step (`nan_policy = "stop"`) it runs to the end of its execution, the first bad step
    is still the one reported (`nonfinite_step`), no checkpoint is written after it, and
    the weights were already non-finite.
    """
    if self.steps_per_execution == 1:
      return super().make_train_function(force)
    if self.train_function is not None and not force:
      return self.train_function
    strategy = self.distribute_strategy

    compiled = not self.run_eagerly

    @tf.autograph.experimental.do_not_convert
    def one_step_on_data(data):  # Keras' one step, XLA-compiled alike.
      outputs = strategy.run(self.train_step, args=(data,))
      return reduce_per_replica(outputs, strategy, reduction="auto")

    if compiled:
      one_step_on_data = tf.function(
        one_step_on_data, reduce_retracing=True, jit_compile=self.jit_compile
      )
    one_step = self._autoconvert_optionals(one_step_on_data)

    @tf.autograph.experimental.do_not_convert
    def steps(iterator, count):
      outputs = one_step(next(iterator))
      _, outputs = tf.while_loop(
        lambda i, _: i < count,
        lambda i, _: (i + 1, one_step(next(iterator))),
        (tf.constant(1), outputs),
      )
      return outputs

    steps = tf.function(steps, reduce_retracing=True) if compiled else steps
    keras_function = self._make_function(self.train_step)

    def function(iterator):
      if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
        return steps(iterator, tf.constant(self._next_execution()))
      return keras_function(iterator)  # A Python iterator (`train_on_batch`): Keras' loop.

    self.train_function = function
    return function

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    # Keras MEAN-reduces a first (images, labels) batch only to learn its shapes; the
    # MultiWorkerMirroredStrategy cannot reduce a nest (and needs no collective for
    # shapes), so this worker's local values stand in. fit() rewinds the iterator after.
    strategy = self.distribute_strategy
    if iterator is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
      for _, _, it in iterator:
        data_batch = tf.nest.map_structure(
          lambda v: strategy.experimental_local_results(v)[0], next(it)
        )
        break
      iterator = None
    super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

  def layer_loss_scale(self):
    """Weight of the layers' losses in this step: 1, or during `method.kl_annealing`'s
    warm-up uncertainty-baselines' `min(1, (iterations + 1) / anneal_steps)` (its
    `rank1_bnn.py` / `variational_inference.py` scale the whole `model.losses` so), with
    `anneal_steps = kl_annealing * total_steps`. `iterations` is checkpointed: a resumed
    run continues the warm-up where it stopped.
    """
    fraction = getattr(self.method, "kl_annealing", 0.0)
    optimizer = getattr(self, "optimizer", None)
    if not fraction or not self.total_steps or optimizer is None:
      return 1.0
    steps = max(fraction * self.total_steps, 1.0)
    done = ops.cast(optimizer.iterations, "float32") + 1.0
    return ops.minimum(1.0, done / steps)

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
    loss = _replica_scale(ops.mean(self.method.train_loss(x, y, y_pred)))
    if self.losses:  # Regularisers of the layers (the ELBO's KL), already replica-scaled.
      scale = self.layer_loss_scale()
      for extra in self.losses:
        loss = loss + scale * self._aggregate_additional_loss(extra)
    if self.coupled_l2:
      loss = loss + _replica_scale(self.coupled_l2 * self.l2_norm_squared())
    return loss

  def coupled_l2_variables(self):
    """The trainable variables `coupled_l2` applies to (path matches the pattern)."""
    return [v for v in self.trainable_weights if self.coupled_l2_pattern.search(v.path)]

  def l2_norm_squared(self):
    """`sum ||w||^2` over `coupled_l2_variables()` (float32)."""
    chosen = self.coupled_l2_variables()
    if not chosen:
      raise ValueError(
        f"train.coupled_l2_pattern={self.coupled_l2_pattern.pattern!r} matches no trainable "
        "variable path; paths look like "
        f"{', '.join(v.path for v in self.trainable_weights[:5])}."
      )
    return ops.sum(ops.stack([ops.sum(ops.square(ops.cast(v, "float32"))) for v in chosen]))

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    labels = y if len(y.shape) == 1 else ops.argmax(y, axis=-1)
    predicted = ops.argmax(y_pred["probs"], axis=-1)
    self.accuracy_tracker.update_state(
      ops.cast(ops.equal(ops.cast(labels, "int32"), ops.cast(predicted, "int32")), "float32"),
      # Auxiliary outliers (label -1, outlier exposure) have no class: not counted.
      sample_weight=ops.cast(ops.greater_equal(ops.cast(labels, "int32"), 0), "float32"),
    )
    logs = self.get_metrics_result()
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
      # Keras MEAN-reduces every log along axis 0 under this strategy, which fails on a
      # scalar: give each one that axis (the reduced logs are scalars again).
      logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs

  def train_step(self, data):
    """Keras' TF train step plus non-finite checks that also work under `jit_compile=True`.

    `stop`: the update is applied and the first step whose loss, gradients or updated
    parameters are non-finite is recorded (`callbacks.NanGuard` stops there, before any
    save). `skip_batch`: a batch with a non-finite loss or gradient changes no weight, no
    optimizer slot and no float layer state (BatchNorm statistics, GP precision); only
    the step counter advances (it is the data position). Non-finite parameters cannot be
    skipped past and always stop.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    skip = self.nan_policy == "skip_batch"
    opt = self.optimizer
    tvars = self.trainable_weights
    step = tf.cast(opt.iterations, tf.int64) + 1  # 1-based number of this update.
    # float16 loss scaling: the scaler owns its state and skips (and counts) a step whose
    # scaled gradients overflow.
    scaler_state = {id(v) for v in loss_scale_variables(opt)}
    if skip:
      params_ok = _all_finite([tf.convert_to_tensor(v) for v in tvars])
      # Everything a step may change except the step counter: restored after the update
      # where the batch was non-finite (no cond: collectives inside one break replicas).
      revert = [
        v
        for v in (
          list(self.network.non_trainable_variables)
          + list(tvars)
          + [w for w in opt.variables if w is not opt.iterations and id(w) not in scaler_state]
        )
        if "float" in str(v.dtype)
      ]
      saved = [tf.identity(tf.convert_to_tensor(v)) for v in revert]
    with tf.GradientTape() as tape:
      y_pred = self(x, training=True)
      loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
      scaled = opt.scale_loss(loss)
    grads = tape.gradient(scaled, tvars)
    loss_ok, grads_ok = tf.math.is_finite(loss), _all_finite(grads)
    if scaler_state:
      # Overflow of the scaled gradients is the loss scaler's to handle (that step is
      # skipped, the scale halved); non-finite gradients at a scale <= 1 are not overflow.
      grads_ok = tf.logical_or(grads_ok, tf.convert_to_tensor(opt.dynamic_scale) > 1.0)
    batch = tf.shape(tf.nest.flatten(x)[0])[0]
    weight = tf.cast(batch, loss.dtype)
    if skip:
      opt.apply_gradients(zip(grads, tvars))
      params_ok, loss_ok, grads_ok = _all_replicas(
        params_ok, loss_ok, grads_ok, after=[tf.convert_to_tensor(v) for v in tvars[:1]]
      )
      ok = tf.logical_and(loss_ok, grads_ok)
      weight = weight * tf.cast(ok, loss.dtype)
      self._restore_where_not(ok, revert, saved)
      self.skipped_batches.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
    else:
      opt.apply_gradients(zip(grads, tvars))
      params_ok = _all_finite([tf.convert_to_tensor(v) for v in tvars])
      params_ok, loss_ok, grads_ok = _all_replicas(params_ok, loss_ok, grads_ok)
      ok = tf.logical_and(tf.logical_and(loss_ok, grads_ok), params_ok)
    averager = getattr(self.network, "weight_average", None)  # SWA/EMA/SWAG: after the update.
    if averager is not None:
      averager.update(step)
    fatal = tf.logical_not(params_ok) if skip else tf.logical_not(ok)
    bits = (
      tf.cast(tf.logical_not(loss_ok), tf.int32) * NONFINITE_LOSS
      + tf.cast(tf.logical_not(grads_ok), tf.int32) * NONFINITE_GRADS
      + tf.cast(tf.logical_not(params_ok), tf.int32) * NONFINITE_PARAMS
    )
    first = tf.logical_and(fatal, self.nonfinite_step < 0)
    self.nonfinite_step.assign(tf.where(first, step, self.nonfinite_step))
    self.nonfinite_what.assign(tf.where(first, bits, self.nonfinite_what))
    shown = tf.where(tf.math.is_finite(loss), loss, tf.zeros_like(loss)) if skip else loss
    self._loss_tracker.update_state(_unscale(shown), sample_weight=weight)
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

  def _restore_where_not(self, ok, variables, saved):
    """Puts back `saved` values unless `ok` (per device, like the optimizer's updates: a
    BatchNorm statistic is a mirrored variable that replica code cannot assign).
    """
    tf_vars = [v.value if isinstance(v, keras.Variable) else v for v in variables]

    def restore(distribution, ok, saved):
      for var, old in zip(tf_vars, saved):
        distribution.extended.update(
          var,
          lambda v, o, k: v.assign(tf.where(k, tf.convert_to_tensor(v), o)),
          args=(old, ok),
          group=False,
        )

    tf.__internal__.distribute.interim.maybe_merge_call(
      restore, tf.distribute.get_strategy(), ok, saved
    )
