"""Distillation: train one network to match a teacher's outputs (RRL `Distill`).

Hinton et al., "Distilling the Knowledge in a Neural Network", 2015; Zhang & Bottou,
"Learning useful representations for shifting tasks and distributions", ICML 2023
(distilling a CAT_N teacher into one ResNet-50).

`Distill` is a method composition: the *student* method (modifiers, head, loss,
uncertainty) is unchanged, and its training loss becomes

    loss = kl_weight * T^2 * KL(p_teacher^T || q_student^T)
           + label_weight * student loss(labels)
           + embedding_weight * mean_d (P z_student - z_teacher)^2

with `p^T = mean_m softmax(logits_m / T)` over the teacher's members and the KL averaged
over the student's members; `P` is an optional linear projection (`projection_dim`) when
the embedding widths differ. The teacher runs inside the train step on the same
(augmented) images; it is frozen, and neither checkpointed nor exported: the exported
network is the student alone.

Example (gin):

```
train.method = @Distill()
Distill.student = @Deterministic()
Distill.teacher = '/runs/cat4/export'   # a SavedModel, or a checkpoint folder / workdir
Distill.temperature = 4.0
```
"""

import gin
import keras
import tensorflow as tf
from keras import ops

from keras_unc.methods.base import Method
from keras_unc.runtime import checkpoints as ckpt_lib


def distillation_kl(teacher_logits, student_logits, temperature):
  """`T^2 KL(p || q)` per example: `p = mean_m softmax(t_m / T)` (`t: [B, Mt, C]`),
  `q_m = softmax(s_m / T)` (`s: [B, Ms, C]`), averaged over the student's members.
  """
  t = ops.cast(teacher_logits, "float32") / temperature
  s = ops.cast(student_logits, "float32") / temperature
  p = ops.mean(ops.softmax(t, axis=-1), axis=1)  # [B, C]
  log_p = ops.log(ops.maximum(p, 1e-30))
  log_q = ops.log_softmax(s, axis=-1)  # [B, Ms, C]
  kl = ops.sum(p[:, None, :] * (log_p[:, None, :] - log_q), axis=-1)  # [B, Ms]
  return temperature**2 * ops.mean(kl, axis=1)


def load_teacher(path, num_classes, input_shape, scope="teacher", method="deterministic"):
  """The teacher network: an exported SavedModel; or a network built with the gin
  bindings of `scope/build_network` (e.g. `teacher/build_network.backbone = @cat_backbone`)
  and loaded from a keras_unc checkpoint (folder or workdir; built with the method that
  wrote it) or, with `path=None`, initialised by those bindings alone (a CAT teacher from
  its members' checkpoints: `teacher/cat_backbone.checkpoints`, `member_head_*`).
  """
  from keras_unc.evaluators.saved_model import SavedModelNetwork
  from keras_unc.methods import get_method
  from keras_unc.training.network import build_network

  if path is not None and tf.saved_model.contains_saved_model(path):
    return SavedModelNetwork(path)
  if path is not None:
    source = ckpt_lib.resolve(path)
    arrays, meta = ckpt_lib.read(source)
    method = meta.get("method") or method
  with gin.config_scope(scope):
    network = build_network(get_method(method), num_classes, input_shape)
  if path is not None:
    ckpt_lib.assign(network.variables, arrays, "model", source)
  network.trainable = False
  return network


@gin.configurable
class Distill(Method):
  """The student method trained on a teacher's softened outputs (and/or embeddings).

  A protocol wrapped around a method, not a method of its own: it is not in the method
  registry (`train.method = @Distill()` in gin).

  Args:
    student: the `Method` being trained (its head, modifiers and uncertainty are kept).
    teacher: path of the teacher: a SavedModel folder (e.g. a CAT run's `export/`) or a
      checkpoint folder / workdir (rebuilt with `teacher/build_network` gin bindings); or
      None: built from the `teacher/` gin bindings alone (e.g. RRL's CAT_5 teacher: five
      pretrained members, head `cat_weights`), with method `teacher_method`.
    temperature: T of the softened softmaxes.
    kl_weight: weight of `T^2 KL(teacher || student)`.
    label_weight: weight of the student's own loss on the labels.
    embedding_weight: weight of the embedding regression (0: off).
    projection_dim: width of a linear projection of the student embedding regressed onto
      the teacher's (`distill_projection`, part of the student network); None regresses
      the raw embedding (widths must match).
    teacher_method: registered method of a teacher built without a checkpoint.
  """

  def __init__(
    self,
    student=None,
    teacher=gin.REQUIRED,
    temperature=1.0,
    kl_weight=1.0,
    label_weight=0.0,
    embedding_weight=0.0,
    projection_dim=None,
    teacher_method="deterministic",
  ):
    from keras_unc.methods.deterministic import Deterministic

    student = student or Deterministic()
    if not temperature > 0:
      raise ValueError(f"Distill.temperature must be > 0, got {temperature}.")
    if min(kl_weight, label_weight, embedding_weight) < 0 or not (
      kl_weight or label_weight or embedding_weight
    ):
      raise ValueError(
        "Distill: kl_weight, label_weight and embedding_weight must be >= 0 and one of them > 0."
      )
    super().__init__(
      student.head,
      student.modifiers,
      loss=student.loss_name,
      uncertainty=student.uncertainty,
      label_smoothing=student.label_smoothing,
    )
    self.student, self.teacher_path = student, teacher
    self.temperature, self.kl_weight = float(temperature), float(kl_weight)
    self.label_weight, self.embedding_weight = float(label_weight), float(embedding_weight)
    self.projection_dim = projection_dim
    self.teacher_method = teacher_method
    # The distilled network is the student's architecture: checkpoints carry its name,
    # so a later run of the student method warm-starts from it directly.
    self.name = student.name if projection_dim is None else "distill"
    self.batch_multiple = student.batch_multiple
    self.teacher = None

  def build_head(self, embedding, num_classes):
    outputs = self.student.build_head(embedding, num_classes)
    if self.projection_dim is not None:
      outputs["distill_embedding"] = keras.layers.Dense(
        self.projection_dim, name="distill_projection", dtype="float32"
      )(outputs["embedding"])
    return outputs

  def loss(self, labels, outputs):
    return self.student.loss(labels, outputs)

  def callbacks(self):
    return self.student.callbacks()

  def attach(self, network):
    num_classes = network.output["logits"].shape[-1]
    self.teacher = load_teacher(
      self.teacher_path, num_classes, tuple(network.inputs[0].shape[1:]), method=self.teacher_method
    )

  def train_loss(self, images, labels, outputs):
    if self.teacher is None:
      raise RuntimeError(
        "Distill: the teacher is not loaded; the trainer calls "
        "method.attach(network) before training."
      )
    teacher = self.teacher(images, training=False)
    total = 0.0
    if self.kl_weight:
      t_logits = ops.stop_gradient(teacher["logits"])
      if t_logits.shape[-1] != outputs["logits"].shape[-1]:
        raise ValueError(
          f"Distill: the teacher has {t_logits.shape[-1]} classes, the "
          f"student {outputs['logits'].shape[-1]}: distil on the same label "
          "set, or set kl_weight = 0 and use the embedding regression."
        )
      total += self.kl_weight * distillation_kl(t_logits, outputs["logits"], self.temperature)
    if self.label_weight:
      total += self.label_weight * self.student.loss(labels, outputs)
    if self.embedding_weight:
      z = outputs.get("distill_embedding", outputs["embedding"])
      target = ops.stop_gradient(ops.cast(teacher["embedding"], "float32"))
      if z.shape[-1] != target.shape[-1]:
        raise ValueError(
          f"Distill: student embedding width {z.shape[-1]} != teacher's "
          f"{target.shape[-1]}: set Distill.projection_dim = "
          f"{target.shape[-1]}."
        )
      total += self.embedding_weight * ops.mean(
        ops.square(ops.cast(z, "float32") - target), axis=-1
      )
    return total
