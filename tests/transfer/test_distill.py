"""Distillation of a CAT teacher into one network (`Distill`), the teacher running inside
the train step and never exported or checkpointed."""

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_unc import config
from keras_unc.data import get_source
from keras_unc.evaluators import SavedModelNetwork
from keras_unc.methods import Deterministic
from keras_unc.runtime import checkpoints
from keras_unc.training import export
from keras_unc.training import trainer as train_lib
from keras_unc.training.network import build_network
from keras_unc.transfer.distill import Distill, distillation_kl
from tests.transfer.protocol_helpers import cat_params, member_checkpoint

SHORT = [
  "train.evaluators = []",
  "train.export_at_end = False",
  "train.eval_every = None",
  "train.checkpoint_every = None",
]


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("student_members", [1, 3])
def test_kl_matches_numpy(student_members):
  rng = np.random.default_rng(0)
  t, s, temp = rng.normal(size=(5, 2, 7)), rng.normal(size=(5, student_members, 7)), 2.5
  p = _softmax(t / temp).mean(1)  # Teacher predictive: mean over its members.
  want = np.zeros(5)
  for m in range(student_members):
    q = _softmax(s[:, m] / temp)
    want += (p * (np.log(p) - np.log(q))).sum(-1) / student_members
  got = np.asarray(distillation_kl(t.astype("float32"), s.astype("float32"), temp))
  np.testing.assert_allclose(got, temp**2 * want, rtol=1e-5)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A CAT_2 teacher exported as one SavedModel, and its member checkpoints."""
  root = tmp_path_factory.mktemp("teacher")
  paths = [member_checkpoint(root / f"m{i}", seed=i)[0] for i in range(2)]
  config.parse(["testing/tiny.gin"], cat_params(paths, two_stage=True), finalize=False)
  keras.utils.set_random_seed(0)
  cat = build_network(Deterministic(), 10, (8, 8, 1))
  path = export.export_saved_model(cat, str(root / "export"), (8, 8, 1))
  gin.clear_config()
  return path, paths


def _kl_to_teacher(network, teacher_path, temperature):
  images = get_source("digits").arrays("test")[0]
  t = SavedModelNetwork(teacher_path)(tf.constant(images))["logits"]
  s = network(images.astype("float32"))["logits"]
  return float(np.mean(distillation_kl(np.asarray(t), np.asarray(s), temperature)))


def _run(workdir, method, params=()):
  gin.clear_config()
  config.parse(["testing/tiny.gin"], SHORT + list(params))
  return train_lib.train(str(workdir), "train", method=method)


def test_student_learns_the_cat_teacher_and_exports_alone(teacher, tmp_path):
  path, _ = teacher
  result = _run(
    tmp_path / "distill",
    Distill(Deterministic(), path, temperature=2.0),
    ["train.total_steps = 30", "make_optimizer.learning_rate = 1e-2"],
  )
  student = result["network"]
  gin.clear_config()
  config.parse(["testing/tiny.gin"], [], finalize=False)
  fresh = build_network(Deterministic(), 10, (8, 8, 1))  # Zero head: uniform predictions.
  assert _kl_to_teacher(student, path, 2.0) < 0.5 * _kl_to_teacher(fresh, path, 2.0)
  # The checkpoint holds the student alone, under the student's method name.
  _, arrays, meta = checkpoints.Checkpointer(
    str(tmp_path / "distill" / "checkpoints")
  ).load_latest()
  assert meta["method"] == "deterministic"
  assert [v for v, _ in meta["variables"]] == [v.path for v in fresh.variables]


def test_checkpoint_teacher_with_embedding_regression(teacher, tmp_path):
  _, paths = teacher
  method = Distill(
    Deterministic(),
    paths[0],
    kl_weight=1.0,
    label_weight=0.5,
    embedding_weight=1.0,
    projection_dim=16,
  )
  result = _run(tmp_path / "distill_ckpt", method, ["train.total_steps = 2"])
  arrays, meta = checkpoints.read(paths[0])
  for var, (stored_path, _) in zip(method.teacher.variables, meta["variables"]):
    assert var.path == stored_path and not var.trainable
  for i, var in enumerate(method.teacher.variables):
    np.testing.assert_array_equal(var.numpy(), arrays[f"model/{i:05d}"])
  net = result["network"]
  assert net.get_layer("distill_projection").kernel.shape == (16, 16)
  assert net.method_name == "distill"  # Extra projection layer: not a plain student.


def test_embedding_width_mismatch_is_explained(teacher, tmp_path):
  path, _ = teacher
  with pytest.raises(ValueError, match="set Distill.projection_dim = 32"):
    _run(
      tmp_path / "bad",
      Distill(Deterministic(), path, kl_weight=0.0, embedding_weight=1.0),
      ["train.total_steps = 1"],
    )
  with pytest.raises(ValueError, match="temperature must be > 0"):
    Distill(Deterministic(), path, temperature=0.0)
  with pytest.raises(FileNotFoundError, match="No keras_unc checkpoint"):
    _run(
      tmp_path / "missing",
      Distill(Deterministic(), str(tmp_path / "nothing")),
      ["train.total_steps = 1"],
    )


def test_cat_teacher_built_from_member_checkpoints(teacher, tmp_path):
  """`teacher=None`: RRL's CAT teacher, assembled from the `teacher/` gin bindings."""
  path, paths = teacher
  members = ", ".join(f"@member{i}/vit" for i in range(len(paths)))
  method_params = [
    "teacher/build_network.backbone = @cat_backbone",
    f"teacher/cat_backbone.members = [{members}]",
    f"teacher/cat_backbone.checkpoints = {list(map(str, paths))}",
    "teacher/Deterministic.head_init = @member_head_kernel()",
    "teacher/Deterministic.head_bias_init = @member_head_bias()",
    f"member_head_kernel.checkpoints = {list(map(str, paths))}",
    f"member_head_bias.checkpoints = {list(map(str, paths))}",
  ]
  gin.clear_config()
  config.parse(["testing/tiny.gin"], SHORT + method_params + ["train.total_steps = 2"])
  method = Distill(Deterministic(), None, temperature=2.0)
  result = train_lib.train(str(tmp_path / "cat_teacher"), "train", method=method)
  assert result["network"].method_name == "deterministic"
  images = get_source("digits").arrays("test")[0][:32]
  want = SavedModelNetwork(path)(tf.constant(images))["logits"]
  got = method.teacher(images.astype("float32"), training=False)["logits"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert not method.teacher.trainable_variables
