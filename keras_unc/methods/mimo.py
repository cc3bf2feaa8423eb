"""`mimo`: M subnetworks in one network, M inputs stacked on the channels, M output heads.

Reference: Havasi et al., "Training independent subnetworks for robust prediction",
ICLR 2021 (uncertainty-baselines `baselines/cifar/mimo.py`, `baselines/imagenet/mimo.py`,
`models/wide_resnet_mimo.py`, `models/resnet50_mimo.py`).
"""

import gin
import keras

from keras_unc.layers.mimo import MIMOInput, MIMOLogits
from keras_unc.methods import losses
from keras_unc.methods.base import Method
from keras_unc.methods.heads import Head
from keras_unc.methods.registry import register


class MIMOHead(Head):
  """edward2's `DenseMultihead`: one Dense of `M * C` units, member m's logits in columns
  `[m*C, (m+1)*C)`, put back on the rows of the batch by `MIMOLogits` with the row indices
  of the method's `MIMOInput`.
  """

  def __init__(self, num_members, batch_repetitions):
    self.num_members, self.batch_repetitions = num_members, batch_repetitions
    self.rows = None  # The `MIMOInput` row indices of the network being built.

  def __call__(self, embedding, num_classes, members):
    del members  # The backbone runs once on the stacked images: no tiled batch.
    history = getattr(embedding, "_keras_history", None)
    if self.rows is None or (
      history is not None and isinstance(history.operation, keras.layers.InputLayer)
    ):
      raise ValueError(
        "The mimo head needs the row indices of the MIMO input layer in the same network: "
        "it cannot be built as a separate head (build_network.separate_head=True, training on "
        "cached:DIR embeddings). MIMO trains end to end from images."
      )
    m = self.num_members
    flat = keras.layers.Dense(m * num_classes, name="head", dtype="float32")(embedding)
    logits = MIMOLogits(m, self.batch_repetitions, name="logits", dtype="float32")(
      (flat, self.rows)
    )
    return logits, {}


@register("mimo")
@gin.configurable
class MIMO(Method):
  """MIMO: M members' images on the channels of one backbone, M heads, one forward pass.

  Training: each batch is repeated `batch_repetitions` (R) times and every member sees its
  own shuffle of it, a fraction `input_repetition_probability` of rows shared by all members
  (`keras_unc.layers.mimo.MIMOInput`, a seeded `SeedGenerator`: resumes bit-identically);
  the loss is ub's `sum_m CE_m` of each member against its own labels, averaged over the
  `R * B` rows. Test: the image repeated M times on the channels, one forward pass,
  `logits [B, M, C]`, `probs` the member mean. Serving takes ordinary `[B, H, W, C]` images.

  Deviation: ub divides the loaded batch by R (`train_batch_size = batch // R`) so the network
  sees `batch` rows per step; here the trainer's batch B is repeated, so a step costs ~R
  times a deterministic one on `R * B` rows (set `train.batch_size` to B / R for ub's
  per-step cost, with R times the steps for the same epochs). The training accuracy is that
  of the member-mean predictive on the B original rows.

  Args:
    ensemble_size: M (ub CIFAR: 3, ImageNet: 2).
    input_repetition_probability: rho (ub CIFAR: 0.0, ImageNet: 0.6).
    batch_repetitions: R (ub CIFAR: 4, ImageNet: 2).
    uncertainty, label_smoothing: as `Method`.
    seed: seed of the input permutations' `SeedGenerator` (None: from Keras' global seed,
      which the trainer sets from `train.seed`).
  """

  def __init__(
    self,
    ensemble_size: int = 3,
    input_repetition_probability: float = 0.0,
    batch_repetitions: int = 4,
    uncertainty: str = "msp",
    label_smoothing: float = 0.0,
    seed: int | None = None,
  ):
    # Validates M, R and rho with a clear error before anything is built.
    MIMOInput(ensemble_size, batch_repetitions, input_repetition_probability)
    super().__init__(
      MIMOHead(ensemble_size, batch_repetitions),
      loss="member_ce",
      uncertainty=uncertainty,
      label_smoothing=label_smoothing,
    )
    self.ensemble_size = ensemble_size
    self.input_repetition_probability = float(input_repetition_probability)
    self.batch_repetitions = batch_repetitions
    self.seed = seed

  def backbone_input(self, images):
    stacked, rows = MIMOInput(
      self.ensemble_size,
      self.batch_repetitions,
      self.input_repetition_probability,
      seed=self.seed,
      name="mimo_input",
    )(images)
    self.head.rows = rows
    return stacked

  def loss(self, labels, outputs):
    """`sum_m mean_r CE` per example `[B]` (ub: `reduce_mean(reduce_sum(CE, axis=1))` over
    the `R * B` rows): `M` times the mean CE over the `R * M` slots of the training logits.
    """
    logits = outputs["logits"]
    return self.ensemble_size * losses.member_cross_entropy(labels, logits, self.label_smoothing)
