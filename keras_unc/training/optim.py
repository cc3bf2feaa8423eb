"""Optimizers and learning-rate schedules, configured in gin."""

import math

import gin
import keras
from keras import ops

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb")
DECAYS = ("cosine", "linear", "constant")


@keras.saving.register_keras_serializable(package="keras_unc")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to `base_lr` over `warmup_steps`, then cosine/linear/constant.

  Args:
    base_lr: peak learning rate.
    total_steps: steps of the whole run (decay ends there).
    warmup_steps: linear warmup length.
    decay: "cosine", "linear" or "constant".
    end_fraction: final learning rate as a fraction of `base_lr`.
  """

  def __init__(self, base_lr, total_steps, warmup_steps=0, decay="cosine", end_fraction=0.0):
    if decay not in DECAYS:
      raise ValueError(f"Unknown learning-rate decay {decay!r}: choose one of {DECAYS}.")
    if not math.isfinite(base_lr) or base_lr < 0:
      raise ValueError(
        f"Learning rate must be finite and >= 0, got {base_lr}: fix "
        "make_optimizer.learning_rate in the gin config."
      )
    self.base_lr, self.total_steps, self.warmup_steps = base_lr, total_steps, warmup_steps
    self.decay, self.end_fraction = decay, end_fraction

  def __call__(self, step):
    step = ops.cast(step, "float32")
    warm = max(self.warmup_steps, 1)
    progress = ops.clip(
      (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0
    )
    if self.decay == "cosine":
      factor = 0.5 * (1.0 + ops.cos(math.pi * progress))
    elif self.decay == "linear":
      factor = 1.0 - progress
    else:
      factor = ops.ones_like(progress)
    factor = self.end_fraction + (1.0 - self.end_fraction) * factor
    if self.warmup_steps:
      factor = ops.where(step < self.warmup_steps, step / warm, factor)
    return self.base_lr * factor

  def get_config(self):
    return {
      "base_lr": self.base_lr,
      "total_steps": self.total_steps,
      "warmup_steps": self.warmup_steps,
      "decay": self.decay,
      "end_fraction": self.end_fraction,
    }


@gin.configurable
def make_optimizer(
  total_steps,
  *,
  name="adamw",
  learning_rate=1e-3,
  warmup_steps=0,
  decay="cosine",
  end_fraction=0.0,
  weight_decay=1e-4,
  momentum=0.9,
  nesterov=False,
  global_clipnorm=None,
  beta_2=0.999,
  lr_multipliers=None,
):
  """Builds the optimizer with a warmup + decay schedule.

  Args:
    total_steps: training steps (passed by the trainer).
    name: one of `OPTIMIZERS`.
    learning_rate, warmup_steps, decay, end_fraction: the schedule (`WarmupDecay`).
    weight_decay: decoupled weight decay (AdamW, Lamb, SGD).
    momentum, nesterov: SGD momentum.
    global_clipnorm: clip the global gradient norm to this value (None = off).
    beta_2: Adam second-moment decay (big_vision uses 0.999).
    lr_multipliers: `{regex: multiplier}` on variable paths (first match wins, else 1):
      layer-wise learning rates of a fine-tune (`keras_unc.training.layerwise`); 0 freezes.
  """
  schedule = WarmupDecay(learning_rate, total_steps, warmup_steps, decay, end_fraction)
  common = {"learning_rate": schedule, "global_clipnorm": global_clipnorm}
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
  if lr_multipliers:
    from keras_unc.training.layerwise import with_lr_multipliers

    opt = with_lr_multipliers(opt, lr_multipliers)
  if weight_decay and name in ("adamw", "lamb", "sgd"):
    # Norm scales/offsets and biases are not decayed (big_vision, timm).
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
  return opt
