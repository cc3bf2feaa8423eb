"""MIMO layers: M members' images stacked on the channel axis in, M heads' logits out.

`MIMOInput` draws, in training, uncertainty-baselines' batch repetition and input
permutation (`baselines/cifar/mimo.py`, `train_step`) from a Keras `SeedGenerator` and stacks
the members' images on the channels; `MIMOLogits` puts each member's logits back in the rows
of the original batch using the same indices, so the loss and the training accuracy see
labels `[B]` and outputs of batch B.
"""

import keras
from keras import ops


def _check_members(num_members, batch_repetitions, input_repetition_probability):
  if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
    raise ValueError(f"num_members must be an int >= 1, got {num_members!r}; e.g. 3.")
  if (
    isinstance(batch_repetitions, bool)
    or not isinstance(batch_repetitions, int)
    or batch_repetitions < 1
  ):
    raise ValueError(
      f"batch_repetitions must be an int >= 1, got {batch_repetitions!r}; e.g. 4 "
      "(uncertainty-baselines CIFAR) or 1 for no repetition."
    )
  rho = input_repetition_probability
  if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
    raise ValueError(
      f"input_repetition_probability must be in [0, 1], got {rho!r}; e.g. 0.0 "
      "(uncertainty-baselines CIFAR) or 0.6 (ImageNet)."
    )


@keras.saving.register_keras_serializable(package="keras_unc")
class MIMOInput(keras.layers.Layer):
  """Stacks M members' images on the channel axis: `[B, ..., C]` -> `([N, ..., C*M], rows)`.

  Training (`training=True`), as uncertainty-baselines' MIMO `train_step`: the batch indices
  are tiled `batch_repetitions` (R) times and shuffled (`main`, N = R*B rows); member m gets
  `rows[m] = concat(shuffle_m(main[:K]), main[K:])` with `K = int(N * (1 - rho))`, so the
  last `N - K` rows (a fraction rho, `input_repetition_probability`) show the same image to
  every member and the others independent images. Every index appears exactly R times in
  each column `rows[:, m]`. Inference: N = B, `rows[:, m] = arange(B)` (the image repeated M
  times). Output channel `c*M + m` is channel c of member m's image `x[rows[:, m]]` (ub's
  `Permute([2, 3, 4, 1])` + `Reshape` of the `[N, M, H, W, C]` stack).

  The shuffles are `argsort` of uniform keys from the layer's `keras.random.SeedGenerator`
  (one draw of `[M + 1, N]` per training call): the generator state is a model variable, so
  a resumed run draws what the uninterrupted one drew.

  Args:
    num_members: M, the ensemble size (ub CIFAR: 3).
    batch_repetitions: R, times each example appears per member in a training batch (ub: 4
      CIFAR, 2 ImageNet).
    input_repetition_probability: rho, fraction of training rows all members share (ub: 0.0
      CIFAR, 0.6 ImageNet).
    seed: int or None, seed of the layer's `SeedGenerator`.

  Returns `(stacked, rows)`: `stacked [N, ..., C*M]` in the compute dtype and the int32 row
  indices `rows [N, M]` into the input batch (ub's `shuffle_indices` stacked on axis 1), for
  `MIMOLogits`.

  Example:
  >>> stacked, rows = MIMOInput(3)(np.zeros([2, 8, 8, 1], "float32"))
  >>> stacked.shape, rows.shape
  ((2, 8, 8, 3), (2, 3))

  Reference: Havasi et al., "Training independent subnetworks for robust prediction",
  ICLR 2021.
  """

  def __init__(
    self,
    num_members,
    batch_repetitions=1,
    input_repetition_probability=0.0,
    seed=None,
    **kwargs,
  ):
    super().__init__(**kwargs)
    _check_members(num_members, batch_repetitions, input_repetition_probability)
    self.num_members = num_members
    self.batch_repetitions = batch_repetitions
    self.input_repetition_probability = float(input_repetition_probability)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed, name="mimo_seed_generator")

  def draw(self, batch_size):
    """One training draw: `(main [N], order [M, N])`, N = R * batch_size.

    `main` is a shuffle of the batch indices tiled R times (ub's `main_shuffle`); member m's
    rows are `main[order[m]]`, where `order[m]` shuffles the first K positions and keeps the
    rest (ub's `concat(shuffle(main_shuffle[:to_shuffle]), main_shuffle[to_shuffle:])`).
    """
    m, n = self.num_members, batch_size * self.batch_repetitions
    keys = keras.random.uniform((m + 1, n), seed=self.seed_generator, dtype="float32")
    base = ops.tile(ops.arange(batch_size, dtype="int32"), (self.batch_repetitions,))
    main = ops.take(base, ops.argsort(keys[0]), axis=0)
    # ub: to_shuffle = int(float(N) * (1 - rho)); rows from K on stay in place for everyone.
    k = ops.cast(ops.cast(n, "float32") * (1.0 - self.input_repetition_probability), "int32")
    position = ops.arange(n, dtype="int32")
    fixed = ops.cast(position, "float32") + 2.0  # Above every key in [0, 1): sorted last.
    order = ops.argsort(ops.where(position[None, :] < k, keys[1:], fixed[None, :]), axis=-1)
    return main, ops.cast(order, "int32")

  def rows(self, batch_size, training=False):
    """Row indices `[N, M]` into a batch of `batch_size`, member m's in column m (a new
    draw in training).
    """
    if not training:
      return ops.tile(ops.arange(batch_size, dtype="int32")[:, None], (1, self.num_members))
    main, order = self.draw(batch_size)
    return ops.transpose(ops.take(main, order, axis=0))

  def call(self, inputs, training=None):
    x = ops.cast(inputs, self.compute_dtype)
    rows = self.rows(ops.shape(x)[0], bool(training))
    return self.stack(x, rows), rows

  def stack(self, x, rows):
    """`[N, ..., C*M]`: channel `c*M + m` is channel c of `x[rows[:, m]]`."""
    members = ops.take(x, rows, axis=0)  # [N, M, ..., C]
    rank = len(x.shape)
    members = ops.transpose(members, (0, *range(2, rank + 1), 1))  # [N, ..., C, M]
    shape = ops.shape(members)
    return ops.reshape(members, (*shape[:-2], x.shape[-1] * self.num_members))

  def compute_output_shape(self, input_shape):
    channels = None if input_shape[-1] is None else input_shape[-1] * self.num_members
    return (None, *input_shape[1:-1], channels), (None, self.num_members)

  def compute_output_spec(self, inputs, training=None):
    shapes = self.compute_output_shape(inputs.shape)
    return (
      keras.KerasTensor(shapes[0], dtype=self.compute_dtype),
      keras.KerasTensor(shapes[1], dtype="int32"),
    )

  def get_config(self):
    return {
      **super().get_config(),
      "num_members": self.num_members,
      "batch_repetitions": self.batch_repetitions,
      "input_repetition_probability": self.input_repetition_probability,
      "seed": self.seed,
    }


@keras.saving.register_keras_serializable(package="keras_unc")
class MIMOLogits(keras.layers.Layer):
  """M heads' logits `[N, M*C]` back onto the rows of the original batch.

  Member m's logits are columns `[m*C, (m+1)*C)` (edward2 `DenseMultihead`: split the last
  axis in M and stack). Inference: `[B, M, C]`. Training, with the `rows [N, M]` of
  `MIMOInput` (each index R times per member): member m's N rows are sorted by the index they
  show, giving `[B, R*M, C]` where slot `r*M + m` of row b is member m's logits on its r-th
  view of example b. So `sum_m mean_r CE(slot)` averaged over b equals ub's loss
  `mean_rows sum_m CE(labels[rows[:, m]], logits[:, m])`, and the member mean of the
  predictive is one prediction per example of the batch (the training accuracy's rows).
  Inputs `(logits [N, M*C], rows [N, M])`.

  Args:
    num_members: M.
    batch_repetitions: R, as in the `MIMOInput` before it.

  Example:
  >>> MIMOLogits(3)((np.zeros([2, 30], "float32"), np.zeros([2, 3], "int32"))).shape
  (2, 3, 10)

  Reference: Havasi et al., "Training independent subnetworks for robust prediction",
  ICLR 2021.
  """

  def __init__(self, num_members, batch_repetitions=1, **kwargs):
    super().__init__(**kwargs)
    _check_members(num_members, batch_repetitions, 0.0)
    self.num_members = num_members
    self.batch_repetitions = batch_repetitions

  def call(self, inputs, training=None):
    logits, rows = inputs
    m = self.num_members
    if logits.shape[-1] is None or logits.shape[-1] % m:
      raise ValueError(
        f"{self.name}: the logits' last axis ({logits.shape[-1]}) must be num_members * "
        f"num_classes with num_members={m}: give the head num_classes * {m} units."
      )
    c = logits.shape[-1] // m
    logits = ops.cast(logits, self.compute_dtype)
    per_member = ops.reshape(logits, (-1, m, c))
    if not training:
      return per_member
    r = self.batch_repetitions
    order = ops.argsort(ops.transpose(rows), axis=-1)  # [M, N]: sorted by example index.
    by_member = ops.transpose(per_member, (1, 0, 2))  # [M, N, C]
    by_member = ops.take_along_axis(by_member, order[:, :, None], axis=1)
    by_member = ops.reshape(by_member, (m, -1, r, c))  # [M, B, R, C]
    return ops.reshape(ops.transpose(by_member, (1, 2, 0, 3)), (-1, r * m, c))

  def compute_output_shape(self, input_shape):
    logits_shape = input_shape[0]
    return (logits_shape[0], self.num_members, logits_shape[-1] // self.num_members)

  def get_config(self):
    return {
      **super().get_config(),
      "num_members": self.num_members,
      "batch_repetitions": self.batch_repetitions,
    }
