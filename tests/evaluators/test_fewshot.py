"""FewShotEvaluator equals the ridge metric on the same selected shots."""

import numpy as np
import pytest

from keras_unc import metrics
from keras_unc.evaluators import FewShotEvaluator, Predictor
from tests.evaluators.helpers import FakeNet, digits, direct


def test_matches_ridge_on_the_selected_shots():
  net = FakeNet()
  evaluator = FewShotEvaluator(
    {"digits": ("digits", "train", "test")}, shots=(1, 5), seeds=(0, 1), l2_reg=2.0
  )
  found = evaluator.evaluate(Predictor(net, batch_size=256))
  (train_x, train_y), (test_x, test_y) = digits("train"), digits("test")
  train, test = direct(net, train_x)["embedding"], direct(net, test_x)["embedding"]
  want = {}
  for shots in (1, 5):
    accs = []
    for seed in (0, 1):
      idx = metrics.select_shots(train_y, shots, seed)
      accs.append(metrics.fewshot_ridge_accuracy(train[idx], train_y[idx], test, test_y, 2.0))
      want[f"fewshot/digits_{shots}shot_seed{seed}"] = accs[-1]
    want[f"fewshot/digits_{shots}shot"] = np.mean(accs)
  assert found.keys() == want.keys()
  for k, v in want.items():
    assert found[k] == pytest.approx(v, abs=1e-9), k
  assert found["fewshot/digits_1shot_seed0"] != found["fewshot/digits_1shot_seed1"]
  assert found["fewshot/digits_5shot"] > 0.2  # Better than chance on real digits.


def test_fewer_examples_than_shots_is_an_error():
  evaluator = FewShotEvaluator(
    {"tiny": ("digits", "train[:30]", "test", "")}, shots=(10,), prefix="fs"
  )
  with pytest.raises(ValueError, match=r"tiny.*needs 10 example\(s\) per class"):
    evaluator.evaluate(Predictor(FakeNet(), batch_size=64))


def test_bad_dataset_spec():
  with pytest.raises(ValueError, match="expected"):
    FewShotEvaluator({"x": ("digits", "train")})
