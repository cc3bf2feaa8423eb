"""MIMO layers: the shared harness, ub's input permutation and channel stacking transcribed in
NumPy, and the training loss against a NumPy sum of the members' cross-entropies."""

import keras
import numpy as np
import pytest

from keras_unc.layers.mimo import MIMOInput, MIMOLogits
from keras_unc.methods.mimo import MIMO
from tests.layers.helpers import run_layer_test


def _data(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_mimo_input_harness(tmp_path):
  report = run_layer_test(
    MIMOInput,
    {"num_members": 3, "batch_repetitions": 2, "input_repetition_probability": 0.5, "seed": 4},
    _data(2, 5, 5, 2),
    tmp_path=tmp_path,
    expected_output_shape=((2, 5, 5, 6), (2, 3)),
    expected_num_trainable_weights=0,
    expected_num_seed_generators=1,
    # The int32 rows are not float: test_float32_outputs_under_mixed_precision instead.
    run_mixed_precision_check=False,
  )
  # Inference: the image repeated on the channels, rows = arange(B) for every member.
  stacked, rows = report.outputs
  np.testing.assert_array_equal(rows, np.tile(np.arange(2)[:, None], (1, 3)))
  np.testing.assert_array_equal(stacked, np.repeat(_data(2, 5, 5, 2), 3, axis=-1))


def test_mimo_logits_harness(tmp_path):
  rows = np.tile(np.arange(4, dtype="int32")[:, None], (1, 3))
  report = run_layer_test(
    MIMOLogits,
    {"num_members": 3, "batch_repetitions": 1},
    (_data(4, 15), rows),
    tmp_path=tmp_path,
    expected_output_shape=(4, 3, 5),
    expected_num_trainable_weights=0,
    run_mixed_precision_check=False,  # int rows: the harness would cast them to bfloat16.
  )
  # edward2 DenseMultihead: split the last axis in M, stack on axis 1.
  want = np.stack(np.split(_data(4, 15), 3, axis=-1), axis=1)
  np.testing.assert_array_equal(report.outputs[0], want)


def _ub_mimo_batch(images, labels, main_shuffle, member_shuffles, ensemble_size, rho):
  """NumPy transcription of uncertainty-baselines `baselines/cifar/mimo.py` `train_step`
  (`step_fn`, the same in `baselines/imagenet/mimo.py`) with its random shuffles given:
  `main_shuffle` = `tf.random.shuffle(tf.tile(tf.range(batch_size), [batch_repetitions]))`,
  `member_shuffles[m]` = the permutation `tf.random.shuffle` applied to
  `main_shuffle[:to_shuffle]` for member m. Then `wide_resnet_mimo`'s input layers:
  `Permute([2, 3, 4, 1])` + `Reshape(... + [C * ensemble_size])`.
  """
  to_shuffle = int(float(main_shuffle.shape[0]) * (1.0 - rho))
  shuffle_indices = [
    np.concatenate([main_shuffle[:to_shuffle][member_shuffles[m]], main_shuffle[to_shuffle:]])
    for m in range(ensemble_size)
  ]
  stacked = np.stack([images[idx] for idx in shuffle_indices], axis=1)  # [N, M, H, W, C]
  stacked_labels = np.stack([labels[idx] for idx in shuffle_indices], axis=1)  # [N, M]
  x = np.transpose(stacked, (0, 2, 3, 4, 1))
  x = x.reshape(*x.shape[:3], x.shape[3] * ensemble_size)
  return x, stacked_labels, np.stack(shuffle_indices, axis=1)


@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_permutations_and_stacking_match_ub(rho):
  m, r, b = 3, 4, 10
  n = r * b
  layer = MIMOInput(m, r, rho, seed=1)
  images, labels = _data(b, 4, 4, 2), np.arange(b) * 7
  state = np.asarray(layer.seed_generator.state.numpy())
  stacked, rows = (np.asarray(t) for t in layer(images, training=True))
  layer.seed_generator.state.assign(state)  # The same draw again, taken apart.
  main, order = (np.asarray(t) for t in layer.draw(b))
  k = int(float(n) * (1.0 - rho))
  # `main` is a shuffle of the indices tiled R times; each member shuffles only its first K.
  np.testing.assert_array_equal(np.sort(main), np.sort(np.tile(np.arange(b), r)))
  for mo in order:
    np.testing.assert_array_equal(np.sort(mo[:k]), np.arange(k))
    np.testing.assert_array_equal(mo[k:], np.arange(k, n))
  want, want_labels, want_rows = _ub_mimo_batch(images, labels, main, order[:, :k], m, rho)
  np.testing.assert_array_equal(rows, want_rows)
  np.testing.assert_array_equal(stacked, want)
  np.testing.assert_array_equal(labels[rows], want_labels)
  # Every example R times per member; a fraction rho of rows shared by all members.
  for member in rows.T:
    np.testing.assert_array_equal(np.bincount(member, minlength=b), np.full(b, r))
  shared = np.all(rows == rows[:, :1], axis=1)
  assert shared[k:].all() and shared[:k].mean() < 0.5
  # A second call draws new permutations (the seed generator moved).
  again = np.asarray(layer(images, training=True)[1])
  assert not np.array_equal(again, rows)


def test_input_repetition_statistics():
  # Over many draws: P(all members see one image at a row) = rho + (1 - rho) * chance, and
  # every position of `main` holds each index with probability 1 / B.
  m, r, b, rho = 2, 2, 8, 0.5
  layer = MIMOInput(m, r, rho, seed=3)
  draws = [np.asarray(layer.rows(b, training=True)) for _ in range(300)]
  shared = np.mean([np.mean(d[:, 0] == d[:, 1]) for d in draws])
  k = int(r * b * (1 - rho))
  chance = (r - 1) / (k - 1) * (k / (r * b)) if k > 1 else 0.0  # Rough: same index by luck.
  assert rho <= shared <= rho + chance + 0.05, shared
  first = np.bincount([d[0, 0] for d in draws], minlength=b) / len(draws)
  assert np.all(np.abs(first - 1 / b) < 0.08), first


def _softmax_ce(logits, label):
  z = logits - logits.max()
  return -(z[label] - np.log(np.exp(z).sum()))


def test_training_loss_is_ub_sum_of_member_cross_entropies():
  m, r, b, c = 3, 2, 5, 4
  layer = MIMOInput(m, r, 0.3, seed=2)
  rows = np.asarray(layer.rows(b, training=True)).T  # [M, N]
  flat = _data(r * b, m * c, seed=5)  # DenseMultihead output on the N stacked rows.
  labels = np.array([0, 3, 1, 2, 3])
  # ub: mean over the N rows of sum over members of CE(labels[rows[m]], logits[:, m]).
  ub = np.mean(
    [
      sum(_softmax_ce(flat[i, j * c : (j + 1) * c], labels[rows[j, i]]) for j in range(m))
      for i in range(r * b)
    ]
  )
  logits = MIMOLogits(m, r)((flat, rows.T), training=True)
  assert tuple(logits.shape) == (b, r * m, c)
  loss = MIMO(ensemble_size=m, batch_repetitions=r).loss(labels, {"logits": logits})
  assert tuple(loss.shape) == (b,)
  np.testing.assert_allclose(float(np.mean(np.asarray(loss))), ub, rtol=1e-5)
  # Slot r*M + j of row b is member j's logits on a row showing example b.
  got = np.asarray(logits).reshape(b, r, m, c)
  for j in range(m):
    for example in range(b):
      mine = np.where(rows[j] == example)[0]
      want = sorted(map(tuple, np.round(flat[mine, j * c : (j + 1) * c], 6)))
      have = sorted(map(tuple, np.round(got[example, :, j], 6)))
      assert want == have


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"num_members": 0}, "num_members must be an int >= 1"),
    ({"num_members": 2, "batch_repetitions": 0}, "batch_repetitions must be an int >= 1"),
    ({"num_members": 2, "input_repetition_probability": 1.5}, "input_repetition_probability"),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    MIMOInput(**kwargs)


def test_logits_not_divisible_by_members():
  with pytest.raises(ValueError, match="num_members \\* num_classes"):
    MIMOLogits(3)((_data(2, 10), np.zeros((2, 3), "int32")))


def test_float32_outputs_under_mixed_precision():
  policy = keras.DTypePolicy("mixed_bfloat16")
  stacked, rows = MIMOInput(2, 2, dtype=policy)(_data(3, 4, 4, 1), training=True)
  dtype = keras.backend.standardize_dtype
  assert dtype(stacked.dtype) == "bfloat16" and dtype(rows.dtype) == "int32"
  logits = MIMOLogits(2, 2, dtype="float32")((_data(6, 8), rows), training=True)
  assert dtype(logits.dtype) == "float32" and tuple(logits.shape) == (3, 4, 4)
