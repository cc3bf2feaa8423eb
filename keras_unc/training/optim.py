"""Optimizers and learning-rate schedules, configured in gin."""

import math

import gin
import keras
from keras import ops

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb")
DECAYS = ("cosine", "linear", "constant", "step", "swa")
LR_SCALINGS = ("linear", "sqrt", "none")
# Variable-name patterns never decayed by the decoupled weight decay.
WEIGHT_DECAY_EXCLUDED = ("bias", "gamma", "beta", "alpha")


@keras.saving.register_keras_serializable(package="keras_unc")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup to `base_lr` over `warmup_steps`, then cosine/linear/constant/step decay.

  All step counts (`total_steps`, `warmup_steps`, `decay_boundaries`) count optimizer
  updates. With gradient accumulation over `accumulation_steps` forward passes, Keras calls
  the schedule with the forward-pass counter; update `u` is applied at forward pass
  `(u + 1) * accumulation_steps - 1` and uses the learning rate of update `u`.

  Args:
    base_lr: peak learning rate.
    total_steps: updates of the whole run (cosine/linear decay ends there).
    warmup_steps: linear warmup length (updates).
    decay: "cosine", "linear", "constant" or "step" (piecewise constant: x `decay_ratio` at
      each of `decay_boundaries`, as uncertainty-baselines' `WarmUpPiecewiseConstantSchedule`).
    end_fraction: final learning rate of cosine/linear decay as a fraction of `base_lr`.
    decay_boundaries: "step" decay: the updates (increasing, > 0) at which the learning rate
      is multiplied by `decay_ratio`; from update `b_i` on it is `base_lr * decay_ratio**i`.
    decay_ratio: "step" decay: the factor applied at each boundary.
      "swa" decay: the schedule of SWA and SWAG (swa_gaussian's `schedule`, Izmailov et al.
      2018, Maddox et al. 2019): with `decay_boundaries=(s,)`, the update `s` at which weight
      averaging starts, and `r = end_fraction` (their `swa_lr / lr_init`, 0.5 for their
      ResNets): `base_lr` until 0.5 s, linear to `r * base_lr` at 0.9 s, then constant, so
      the averaged iterates keep exploring (a cosine tail freezes them: their covariance,
      and SWAG with it, collapses).
    warmup_start_lr: learning rate at update 0; the warmup is linear from it to `base_lr`
      (timm's `--warmup-lr`).
    accumulation_steps: forward passes per update (the optimizer's gradient accumulation).
  """

  def __init__(
    self,
    base_lr,
    total_steps,
    warmup_steps=0,
    decay="cosine",
    end_fraction=0.0,
    decay_boundaries=(),
    decay_ratio=0.1,
    warmup_start_lr=0.0,
    accumulation_steps=1,
  ):
    if decay not in DECAYS:
      raise ValueError(f"Unknown learning-rate decay {decay!r}: choose one of {DECAYS}.")
    for name, value in (("learning_rate", base_lr), ("warmup_start_lr", warmup_start_lr)):
      if not math.isfinite(value) or value < 0:
        raise ValueError(
          f"Learning rate must be finite and >= 0, got {value}: fix "
          f"make_optimizer.{name} in the gin config."
        )
    boundaries = tuple(int(b) for b in decay_boundaries or ())
    if decay == "step":
      if not boundaries:
        raise ValueError(
          "make_optimizer.decay='step' needs make_optimizer.decay_boundaries: the updates "
          "at which the learning rate is multiplied by decay_ratio (e.g. (30, 60, 80) epochs "
          "x steps per epoch)."
        )
      if any(b <= 0 for b in boundaries) or list(boundaries) != sorted(set(boundaries)):
        raise ValueError(
          f"make_optimizer.decay_boundaries={boundaries} must be increasing positive update counts."
        )
      if not math.isfinite(decay_ratio) or decay_ratio < 0:
        raise ValueError(f"make_optimizer.decay_ratio={decay_ratio} must be finite and >= 0.")
    elif decay == "swa":
      if len(boundaries) != 1 or boundaries[0] <= 0:
        raise ValueError(
          f"make_optimizer.decay='swa' needs make_optimizer.decay_boundaries=(s,), one "
          f"positive update count: the step at which weight averaging starts (got "
          f"{boundaries}); e.g. 0.75 x train.total_steps."
        )
      if not 0 < end_fraction <= 1:
        raise ValueError(
          f"make_optimizer.decay='swa' takes the constant SWA learning rate as "
          f"make_optimizer.end_fraction (swa_lr / learning_rate, in (0, 1]), got {end_fraction}."
        )
    elif boundaries:
      raise ValueError(
        f"make_optimizer.decay_boundaries={boundaries} is only used by decay='step' or "
        f"'swa', but decay={decay!r}: set make_optimizer.decay or drop the boundaries."
      )
    if int(accumulation_steps) < 1:
      raise ValueError(f"accumulation_steps={accumulation_steps} must be >= 1.")
    self.base_lr, self.total_steps, self.warmup_steps = base_lr, total_steps, warmup_steps
    self.decay, self.end_fraction = decay, end_fraction
    self.decay_boundaries, self.decay_ratio = boundaries, decay_ratio
    self.warmup_start_lr, self.accumulation_steps = warmup_start_lr, int(accumulation_steps)

  def __call__(self, step):
    step = ops.cast(step, "float32")
    if self.accumulation_steps > 1:
      step = ops.floor(step / self.accumulation_steps)  # The update this pass belongs to.
    progress = ops.clip(
      (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0
    )
    if self.decay == "step":
      factor = ops.ones_like(step)
      for boundary in self.decay_boundaries:
        factor = ops.where(step >= boundary, factor * self.decay_ratio, factor)
    elif self.decay == "swa":
      t = step / self.decay_boundaries[0]
      r = self.end_fraction
      factor = ops.where(t <= 0.5, 1.0, ops.where(t <= 0.9, 1.0 - (1.0 - r) * (t - 0.5) / 0.4, r))
    else:
      if self.decay == "cosine":
        factor = 0.5 * (1.0 + ops.cos(math.pi * progress))
      elif self.decay == "linear":
        factor = 1.0 - progress
      else:
        factor = ops.ones_like(progress)
      factor = self.end_fraction + (1.0 - self.end_fraction) * factor
    lr = self.base_lr * factor
    if self.warmup_steps:
      start = self.warmup_start_lr
      warm = start + (self.base_lr - start) * step / self.warmup_steps
      lr = ops.where(step < self.warmup_steps, warm, lr)
    return lr

  def get_config(self):
    return {
      "base_lr": self.base_lr,
      "total_steps": self.total_steps,
      "warmup_steps": self.warmup_steps,
      "decay": self.decay,
      "end_fraction": self.end_fraction,
      "decay_boundaries": list(self.decay_boundaries),
      "decay_ratio": self.decay_ratio,
      "warmup_start_lr": self.warmup_start_lr,
      "accumulation_steps": self.accumulation_steps,
    }


class ForwardStepCounter:
  """Mixin over a Keras optimizer with gradient accumulation: `iterations` counts forward
  passes (every `apply_gradients` call), not updates.

  Keras reports `iterations = forward passes // gradient_accumulation_steps`; the trainer,
  its checkpoints and callbacks count steps as data position (one batch = one step), so
  with accumulation `iterations` is the raw counter here. Updates = `iterations // N`.
  """

  @property
  def iterations(self):
    return self._iterations


@keras.saving.register_keras_serializable(package="keras_unc")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
  """Keras' dynamic loss scaling (float16), with the step counter kept as data position.

  Keras 3 skips an update whose scaled gradients are non-finite (and halves the scale)
  without advancing the wrapped optimizer's `iterations`; the trainer counts steps as
  batches seen (checkpoints, schedules, resume from `(seed, step)`), so here a skipped
  step still advances it, as `tf.keras`' `LossScaleOptimizer` did. With gradient
  accumulation a skipped forward pass contributes a zero gradient, so the accumulation
  cycle stays aligned with the batches (the update averages the other passes).

  Args:
    inner_optimizer: the optimizer to wrap (from `make_optimizer`).
    initial_scale: first loss scale (Keras: 2**15).
    dynamic_growth_steps: finite steps after which the scale doubles (Keras: 2000).
    **kwargs: `keras.optimizers.LossScaleOptimizer` arguments.
  """

  def _skip(self):
    super()._stateful_handle_non_finite_grads()
    self.inner_optimizer._iterations.assign_add(1)  # noqa: SLF001 (the raw pass counter)

  def _stateful_handle_non_finite_grads(self):
    self._skip()

  def _common_apply(self, grads, trainable_variables=None):
    if not self.inner_optimizer.gradient_accumulation_steps:
      return super()._common_apply(grads, trainable_variables)
    tvars = trainable_variables or self._trainable_variables

    def skipped():
      super(LossScaleOptimizer, self)._stateful_handle_non_finite_grads()
      # apply() advances the pass counter; an update pass applies the other passes' mean.
      self.inner_optimizer.apply(
        [g if g is None else ops.zeros_like(g) for g in grads], trainable_variables
      )

    ops.cond(
      self.check_finite(grads),
      lambda: self._stateful_handle_finite_grads(grads, tvars),
      skipped,
    )
    return None


def unwrap(optimizer):
  """The optimizer that does the updates: the inner one of a `LossScaleOptimizer`."""
  return getattr(optimizer, "inner_optimizer", optimizer)


def loss_scale_variables(optimizer):
  """The loss-scale state of `optimizer` (empty without loss scaling): the dynamic scale
  and its growth counter, which a checkpoint holds and `nan_policy="skip_batch"` must not
  roll back.
  """
  if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return []
  return list(optimizer._variables)  # noqa: SLF001 (its own, not the inner optimizer's)


_MIXED = {}


def mix_in(optimizer, mixin):
  """A copy of the unbuilt `optimizer` (same config) whose class also derives from `mixin`."""
  base = type(optimizer)
  if issubclass(base, mixin):
    return optimizer
  if (mixin, base) not in _MIXED:
    _MIXED[mixin, base] = type(f"{mixin.__name__}{base.__name__}", (mixin, base), {})
  return _MIXED[mixin, base].from_config(optimizer.get_config())


@gin.configurable
def make_optimizer(
  total_steps,
  *,
  name="adamw",
  learning_rate=1e-3,
  warmup_steps=0,
  decay="cosine",
  end_fraction=0.0,
  decay_boundaries=(),
  decay_ratio=0.1,
  warmup_start_lr=0.0,
  weight_decay=1e-4,
  momentum=0.9,
  nesterov=False,
  global_clipnorm=None,
  beta_2=0.999,
  lr_multipliers=None,
  gradient_accumulation_steps=1,
  lr_scale=1.0,
  loss_scale_initial=2.0**15,
  loss_scale_growth_steps=2000,
):
  """Builds the optimizer with a warmup + decay schedule.

  Under the `mixed_float16` dtype policy (`set_precision`) the optimizer is wrapped in
  `LossScaleOptimizer` (dynamic loss scaling, which float16 gradients need to stay clear
  of underflow); `mixed_bfloat16` and float32 have float32's exponent range and need none.

  Args:
    total_steps: training steps = forward passes = batches (passed by the trainer).
    name: one of `OPTIMIZERS`.
    learning_rate, warmup_steps, decay, end_fraction, decay_boundaries, decay_ratio,
      warmup_start_lr: the schedule (`WarmupDecay`); its steps count optimizer updates,
      i.e. `total_steps // gradient_accumulation_steps` in all.
    weight_decay: decoupled weight decay (AdamW, Lamb, SGD). For uncertainty-baselines'
      coupled L2 (`l2 * ||w||^2` added to the loss) use `train.coupled_l2` instead.
    momentum, nesterov: SGD momentum.
    global_clipnorm: clip the global gradient norm to this value (None = off).
    beta_2: Adam second-moment decay (big_vision uses 0.999).
    lr_multipliers: `{regex: multiplier}` on variable paths (first match wins, else 1):
      layer-wise learning rates of a fine-tune (`keras_unc.training.layerwise`); 0 freezes.
    gradient_accumulation_steps: N > 1 averages the gradients of N consecutive batches and
      updates once (Keras' `gradient_accumulation_steps`): one update sees N x
      `train.batch_size` examples. `total_steps` must be a multiple of N.
    lr_scale: multiplies `learning_rate` (set by the trainer when a recipe's batch is
      changed with `train.allow_recipe_change`; leave 1 in gin).
    loss_scale_initial, loss_scale_growth_steps: `mixed_float16` only: the first loss
      scale and the finite steps after which it doubles (Keras' defaults). A step whose
      scaled gradients overflow is skipped and halves the scale.
  """
  accumulation = int(gradient_accumulation_steps)
  if accumulation < 1:
    raise ValueError(
      f"make_optimizer.gradient_accumulation_steps={gradient_accumulation_steps} must be "
      ">= 1 (1 = no accumulation)."
    )
  if total_steps % accumulation:
    raise ValueError(
      f"train.total_steps={total_steps} is not a multiple of "
      f"make_optimizer.gradient_accumulation_steps={accumulation}: the last "
      f"{total_steps % accumulation} batches would be accumulated but never applied. Set "
      f"train.total_steps to {total_steps - total_steps % accumulation} or "
      f"{total_steps - total_steps % accumulation + accumulation}."
    )
  if not math.isfinite(lr_scale) or lr_scale <= 0:
    raise ValueError(f"make_optimizer.lr_scale={lr_scale} must be finite and > 0.")
  schedule = WarmupDecay(
    learning_rate * lr_scale,
    total_steps // accumulation,
    warmup_steps,
    decay,
    end_fraction,
    decay_boundaries=decay_boundaries,
    decay_ratio=decay_ratio,
    warmup_start_lr=warmup_start_lr,
    accumulation_steps=accumulation,
  )
  common = {
    "learning_rate": schedule,
    "global_clipnorm": global_clipnorm,
    "gradient_accumulation_steps": accumulation if accumulation > 1 else None,
  }
  if name == "adamw":
    opt = keras.optimizers.AdamW(weight_decay=weight_decay, beta_2=beta_2, **common)
  elif name == "adam":
    opt = keras.optimizers.Adam(beta_2=beta_2, **common)
  elif name == "sgd":
    opt = keras.optimizers.SGD(
      momentum=momentum, nesterov=nesterov, weight_decay=weight_decay or None, **common
    )
  elif name == "lamb":
    opt = keras.optimizers.Lamb(weight_decay=weight_decay, beta_2=beta_2, **common)
  else:
    raise ValueError(f"Unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}.")
  if accumulation > 1:
    opt = mix_in(opt, ForwardStepCounter)
  if lr_multipliers:
    from keras_unc.training.layerwise import with_lr_multipliers

    opt = with_lr_multipliers(opt, lr_multipliers)
  if weight_decay and name in ("adamw", "lamb", "sgd"):
    # Norm scales/offsets, biases and BatchEnsemble fast weights (`alpha`, `gamma`) are not
    # decayed (big_vision, timm; uncertainty-baselines' BatchEnsemble L2).
    opt.exclude_from_weight_decay(var_names=WEIGHT_DECAY_EXCLUDED)
  if keras.config.dtype_policy().name == "mixed_float16":
    if not (loss_scale_initial > 0 and int(loss_scale_growth_steps) >= 1):
      raise ValueError(
        f"make_optimizer.loss_scale_initial={loss_scale_initial} must be > 0 and "
        f"make_optimizer.loss_scale_growth_steps={loss_scale_growth_steps} >= 1 (Keras: "
        "2**15 and 2000)."
      )
    opt = LossScaleOptimizer(
      opt,
      initial_scale=float(loss_scale_initial),
      dynamic_growth_steps=int(loss_scale_growth_steps),
    )
  return opt


def peak_learning_rate(optimizer):
  """The schedule's peak learning rate of an optimizer from `make_optimizer`."""
  schedule = unwrap(optimizer)._learning_rate  # noqa: SLF001 (Keras keeps the schedule here)
  return float(getattr(schedule, "base_lr", optimizer.learning_rate))


def lr_batch_scale(rule, batch, reference_batch):
  """Learning-rate factor when the global batch changes from `reference_batch` to `batch`.

  Args:
    rule: "linear" (lr proportional to batch: Goyal et al.; uncertainty-baselines'
      `base_lr * batch / 256`), "sqrt" (timm's rule for LAMB/Adam: `sqrt(batch / 256)`) or
      "none".
    batch, reference_batch: global batches (examples per update).

  Returns:
    The factor (1 when the batches are equal).
  """
  if rule not in LR_SCALINGS:
    raise ValueError(
      f"Unknown learning-rate scaling rule {rule!r}: choose one of {', '.join(LR_SCALINGS)} "
      "(train.recipe_lr_scaling)."
    )
  ratio = batch / reference_batch
  return {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]


def batch_plan(
  batch_size,
  replicas,
  *,
  batch_multiple=1,
  method_name="",
  accumulation_steps=1,
  recipe_global_batch=None,
  recipe_lr_scaling="linear",
  allow_recipe_change=False,
  distributed=False,
):
  """Checks the batch against the replicas and the recipe; returns how it is split.

  `batch_size` is global: each of `replicas` replicas gets `batch_size / replicas` examples
  per forward pass whatever the hardware, and one update sees `batch_size x
  accumulation_steps` examples. A recipe that declares the global batch it was published
  with (`recipe_global_batch`) refuses another one unless `allow_recipe_change`, in which
  case the learning rate is rescaled by `recipe_lr_scaling`.

  Args:
    batch_size: `train.batch_size` (global, per forward pass).
    replicas: replicas in sync.
    batch_multiple: the method's required multiple per replica (e.g. 2 for paired views).
    method_name: for the error message.
    accumulation_steps: `make_optimizer.gradient_accumulation_steps`.
    recipe_global_batch: examples per update of the published recipe (None: no check).
    recipe_lr_scaling: "linear", "sqrt" or "none" (see `lr_batch_scale`).
    allow_recipe_change: allow an update batch other than `recipe_global_batch`.
    distributed: whether the strategy is a `tf.distribute` one (not TensorFlow's default).

  Returns:
    dict with `per_replica` (examples per replica per forward pass), `global_batch`
    (examples per update) and `lr_scale` (factor on `make_optimizer.learning_rate`).
  """
  multiple = replicas * batch_multiple
  if batch_size % multiple:
    raise ValueError(
      f"Global batch size {batch_size} is not divisible by {multiple} "
      f"({replicas} replicas x {batch_multiple} required by method "
      f"{method_name!r}): set train.batch_size to a multiple of {multiple}"
      + (
        f", e.g. {batch_size - batch_size % multiple} with make_optimizer."
        "gradient_accumulation_steps raised to keep the examples per update."
        if batch_size > multiple
        else "."
      )
    )
  global_batch = batch_size * accumulation_steps
  if accumulation_steps > 1 and distributed:
    raise ValueError(
      f"make_optimizer.gradient_accumulation_steps={accumulation_steps} needs TensorFlow's "
      "default strategy (one device: get_strategy.name='auto' with at most one GPU): Keras 3 "
      "applies accumulated gradients inside a cond, which tf.distribute strategies cannot "
      f"synchronise. With {replicas} replica(s), use the replicas instead: set "
      f"train.batch_size={global_batch} and make_optimizer.gradient_accumulation_steps=1 "
      "(the same examples per update, split over the replicas)."
    )
  lr_scale = 1.0
  if recipe_global_batch is not None:
    lr_scale = lr_batch_scale(recipe_lr_scaling, global_batch, recipe_global_batch)
    if global_batch != recipe_global_batch and not allow_recipe_change:
      fits = [
        k
        for k in range(1, recipe_global_batch + 1)
        if recipe_global_batch % k == 0 and (recipe_global_batch // k) % multiple == 0
      ]
      hint = (
        f"keep train.batch_size={recipe_global_batch // fits[0]} with "
        f"make_optimizer.gradient_accumulation_steps={fits[0]}"
        + (
          f" (or batch {recipe_global_batch // fits[1]} x {fits[1]} to use less memory)"
          if len(fits) > 1
          else ""
        )
        if fits
        else f"use a train.batch_size that divides {recipe_global_batch} into multiples of "
        f"{multiple}"
      )
      raise ValueError(
        f"train.batch_size={batch_size} x make_optimizer.gradient_accumulation_steps="
        f"{accumulation_steps} = {global_batch} examples per update, but this recipe was "
        f"published with a global batch of {recipe_global_batch} (train.recipe_global_batch)"
        f" on any number of replicas ({replicas} here): {hint}; or set "
        "train.allow_recipe_change=True to train at this batch with the learning rate "
        f"rescaled by the recipe's {recipe_lr_scaling!r} rule (x{lr_scale:.4g})."
      )
  return {"per_replica": batch_size // replicas, "global_batch": global_batch, "lr_scale": lr_scale}
