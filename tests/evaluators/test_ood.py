"""OODEvaluator on real data: digits in-distribution vs MNIST shrunk to 8x8."""

import pytest
import tensorflow as tf

from keras_unc import metrics
from keras_unc.data import get_source
from keras_unc.evaluators import OODEvaluator, Predictor
from keras_unc.evaluators import ood as ood_lib
from tests.evaluators.helpers import FakeNet, digits, direct

MNIST_OOD = {"mnist": ("mnist", "test[:300]", "resize(8)")}


@pytest.fixture(scope="module")
def net():
  return FakeNet(members=2)


@pytest.fixture(scope="module")
def mnist_images():
  return get_source("mnist").arrays("test")[0][:300]


def test_every_score_matches_direct_computation(net, mnist_images):
  evaluator = OODEvaluator("digits", "test", ood=MNIST_OOD)
  found = evaluator.evaluate(Predictor(net, batch_size=128))
  train_images, train_labels = digits("train")
  train = direct(net, train_images)
  inside, outside = direct(net, digits("test")[0]), direct(net, mnist_images)
  scores = {
    "uncertainty": lambda o: o["uncertainty"],
    "msp": lambda o: metrics.msp_uncertainty(o["probs"]),
    "entropy": lambda o: metrics.entropy(o["probs"]),
    "max_logit": lambda o: metrics.max_logit_score(o["logits"]),
    "mahalanobis": lambda o: metrics.mahalanobis_scores(
      train["embedding"], train_labels, o["embedding"]
    ),
    "relative_mahalanobis": lambda o: metrics.mahalanobis_scores(
      train["embedding"], train_labels, o["embedding"], relative=True
    ),
  }
  want = {}
  for kind, fn in scores.items():
    suffix = "" if kind == "uncertainty" else f"_{kind}"
    for k, v in metrics.ood_metrics(fn(inside), fn(outside)).items():
      want[f"ood_mnist/{k}{suffix}"] = v
  assert found.keys() == want.keys()
  assert {
    "ood_mnist/auroc",
    "ood_mnist/fpr95",
    "ood_mnist/auroc_mahalanobis",
    "ood_mnist/aupr_in_relative_mahalanobis",
  } <= found.keys()
  for k, v in want.items():
    assert found[k] == pytest.approx(v, abs=1e-5), k
  # The Mahalanobis scores really differ from the softmax ones (no key mix-up).
  assert found["ood_mnist/auroc_mahalanobis"] != pytest.approx(found["ood_mnist/auroc_msp"])


def test_max_train_examples_fits_on_the_first_examples(net, mnist_images):
  predictor = Predictor(net, batch_size=128)
  evaluator = OODEvaluator(
    "digits", "test", ood=MNIST_OOD, scores=("mahalanobis",), max_train_examples=300
  )
  found = evaluator.evaluate(predictor)
  assert ("digits", "train[:300]", "") in predictor._cache  # Only 300 train images read.
  assert ("digits", "train", "") not in predictor._cache
  train_images, train_labels = digits("train")
  train = direct(net, train_images[:300])
  fit = lambda o: metrics.mahalanobis_scores(train["embedding"], train_labels[:300], o["embedding"])
  want = metrics.ood_metrics(fit(direct(net, digits("test")[0])), fit(direct(net, mnist_images)))
  assert found["ood_mnist/auroc_mahalanobis"] == pytest.approx(want["auroc"], abs=1e-6)


def test_mahalanobis_fitted_once_per_round(net, monkeypatch):
  calls = []
  real = metrics.mahalanobis_scores

  def counting(*args, **kwargs):
    calls.append(kwargs.get("relative", False))
    return real(*args, **kwargs)

  monkeypatch.setattr(ood_lib.metrics, "mahalanobis_scores", counting)
  evaluator = OODEvaluator(
    "digits",
    "test",
    ood={"a": ("mnist", "test[:100]", "resize(8)"), "b": ("mnist", "test[100:200]", "resize(8)")},
    max_train_examples=500,
  )
  predictor = Predictor(net, batch_size=128)
  found = evaluator.evaluate(predictor)
  evaluator.figures(predictor)
  assert sorted(calls) == [False, True]  # One fit per Mahalanobis score for both sets.
  assert "ood_b/auroc_relative_mahalanobis" in found
  predictor.reset()  # A new round fits again.
  evaluator.evaluate(predictor)
  assert len(calls) == 4


def test_ood_set_identical_to_in_distribution_warns(net):
  with pytest.warns(UserWarning, match="in-distribution"):
    evaluator = OODEvaluator(
      "digits", "test", ood={"same": ("digits", "test")}, scores=("uncertainty",)
    )
  found = evaluator.evaluate(Predictor(net, batch_size=128))
  assert found["ood_same/auroc"] == pytest.approx(0.5)
  # Same data under another name (a slice covering everything) is caught on the outputs.
  with pytest.warns(UserWarning, match="exactly the in-distribution outputs"):
    OODEvaluator(
      "digits", "test", ood={"copy": ("digits", "test[:297]")}, scores=("msp",)
    ).evaluate(Predictor(net, batch_size=128))


def test_unknown_score_is_an_error():
  with pytest.raises(ValueError, match="Unknown OOD score"):
    OODEvaluator("digits", scores=("vim",))  # Post-hoc only (needs the head's weights).
  with pytest.raises(ValueError, match="knn_k"):
    OODEvaluator("digits", knn_k=0)


NEW_SCORES = ("energy", "gen", "knn", "mutual_information", "variation_ratio")


def test_output_only_scores_match_direct_computation(net, mnist_images):
  evaluator = OODEvaluator("digits", "test", ood=MNIST_OOD, scores=NEW_SCORES, knn_k=5)
  found = evaluator.evaluate(Predictor(net, batch_size=128))
  train = direct(net, digits("train")[0])
  bank = metrics.knn_fit(train["embedding"])
  scores = {
    "energy": lambda o: metrics.energy_score(o["logits"]),
    "gen": lambda o: metrics.gen_score(o["probs"]),
    "knn": lambda o: metrics.knn_scores(bank, o["embedding"], k=5),
    "mutual_information": lambda o: metrics.mutual_information(o["logits"]),
    "variation_ratio": lambda o: metrics.variation_ratio(o["logits"]),
  }
  inside, outside = direct(net, digits("test")[0]), direct(net, mnist_images)
  assert len(found) == 4 * len(NEW_SCORES)
  for kind, fn in scores.items():
    for k, v in metrics.ood_metrics(fn(inside), fn(outside)).items():
      assert found[f"ood_mnist/{k}_{kind}"] == pytest.approx(v, abs=1e-5), (kind, k)
  assert found["ood_mnist/auroc_knn"] != pytest.approx(found["ood_mnist/auroc_energy"])


def test_knn_fitted_once_per_round(net, monkeypatch):
  calls = []
  real = metrics.knn_fit
  monkeypatch.setattr(ood_lib.metrics, "knn_fit", lambda *a, **k: calls.append(1) or real(*a, **k))
  evaluator = OODEvaluator(
    "digits",
    "test",
    ood={"a": ("mnist", "test[:100]", "resize(8)"), "b": ("mnist", "test[100:200]", "resize(8)")},
    scores=("knn",),
    max_train_examples=300,
    knn_bank_size=100,
  )
  predictor = Predictor(net, batch_size=128)
  found = evaluator.evaluate(predictor)
  evaluator.figures(predictor)
  assert len(calls) == 1 and "ood_b/auroc" + "_knn" in found


def test_epistemic_scores_refuse_a_single_member(mnist_images):
  evaluator = OODEvaluator("digits", "test", ood=MNIST_OOD, scores=("mutual_information",))
  with pytest.raises(ValueError, match="multi-member or MC method"):
    evaluator.evaluate(Predictor(FakeNet(members=1), batch_size=128))


class _WithDetector:
  """FakeNet plus a served detector output `ood_score` (here: the energy)."""

  def __init__(self, net):
    self.net = net

  def __call__(self, images, training=False):
    out = dict(self.net(images))
    out["ood_score"] = -tf.reduce_logsumexp(tf.reduce_mean(out["logits"], axis=1), axis=-1)
    return out


def test_ood_score_reads_the_detector_output(net, mnist_images):
  evaluator = OODEvaluator("digits", "test", ood=MNIST_OOD, scores=("ood_score", "energy"))
  found = evaluator.evaluate(Predictor(_WithDetector(net), batch_size=128))
  for k in ("auroc", "fpr95", "aupr_in", "aupr_out"):
    assert found[f"ood_mnist/{k}_ood_score"] == pytest.approx(
      found[f"ood_mnist/{k}_energy"], abs=1e-5
    )
  with pytest.raises(ValueError, match="post-hoc detector"):
    OODEvaluator("digits", "test", ood=MNIST_OOD, scores=("ood_score",)).evaluate(
      Predictor(net, batch_size=128)
    )
