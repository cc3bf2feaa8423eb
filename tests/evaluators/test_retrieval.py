"""RetrievalEvaluator (URL zero-shot metrics) against by-hand NumPy / scikit-learn / SciPy."""

import tracemalloc

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from keras_unc.data import get_source, parse_ops
from keras_unc.evaluators import Predictor, RetrievalEvaluator, retrieval
from tests.evaluators.helpers import FakeNet, direct


def _nn_correct(x, labels):
  """R@1 mask from the full N x N cosine matrix (fine at test sizes)."""
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = x @ x.T
  np.fill_diagonal(sim, -np.inf)
  return labels[sim.argmax(axis=1)] == labels


def _clustered(seed, n, dim=6, classes=4):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  x = rng.normal(size=(classes, dim))[labels] + rng.normal(scale=1.0, size=(n, dim))
  return x, labels


def _zoom_by_hand(images, fractions):
  """Central crop keeping `f` of height and width (rounded, at least 1), bilinear resize."""
  out = []
  for img, f in zip(images, fractions):
    h, w = img.shape[:2]
    ch, cw = max(int(np.round(h * f)), 1), max(int(np.round(w * f)), 1)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = img[top : top + ch, left : left + cw].astype(np.float32)
    out.append(np.clip(np.round(tf.image.resize(crop, (h, w)).numpy()), 0, 255))
  return np.stack(out).astype(np.uint8)


def test_retrieval_metrics_by_hand():
  x, labels = _clustered(0, 300)
  rng = np.random.default_rng(1)
  correct = _nn_correct(x, labels)
  unc = rng.random(300) + 0.6 * ~correct
  soft = rng.dirichlet(np.ones(5) * 0.5, 300)
  found = retrieval.retrieval_metrics(x, labels, unc, soft, quantiles=(0.1, 0.5), chunk_size=7)
  assert found["r1"] == pytest.approx(correct.mean(), abs=0)
  assert found["auroc_correct"] == pytest.approx(roc_auc_score(correct, -unc), abs=1e-12)
  assert found["auroc_correct"] > 0.7  # The test uncertainty is informative.
  entropy = -np.sum(soft * np.log(soft), axis=1)
  assert found["rcorr_entropy"] == pytest.approx(spearmanr(unc, entropy)[0], abs=1e-12)
  assert found["min_unc"] == unc.min() and found["max_unc"] == unc.max()
  assert found["avg_unc"] == pytest.approx(unc.sum() / 300)
  s = np.sort(unc)  # Linear-interpolated quantiles by hand.
  for q, key in ((0.1, "q10_unc"), (0.5, "q50_unc")):
    pos = q * 299
    lo = int(np.floor(pos))
    assert found[key] == pytest.approx(s[lo] + (pos - lo) * (s[lo + 1] - s[lo]))
  assert "rcorr_entropy" not in retrieval.retrieval_metrics(x, labels, unc)


def test_r_auroc_undefined_is_nan():
  x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
  found = retrieval.retrieval_metrics(x, np.array([0, 0, 1, 1]), np.arange(4.0))
  assert found["r1"] == 1.0 and np.isnan(found["auroc_correct"])


def test_mixed_metrics_by_hand():
  x, labels = _clustered(2, 200)
  up_x, up_labels = _clustered(3, 200)
  up_x = up_x + 2.0  # A different distribution.
  rng = np.random.default_rng(4)
  unc, up_unc = rng.random(200) + 0.3, rng.random(200)
  found = retrieval.mixed_metrics(x, labels, unc, up_x, up_labels, up_unc, chunk_size=16)
  # Equal sizes: the subsets are the whole sets (in another order, which AUROC ignores).
  emb = np.concatenate([up_x, x])
  mixed = np.concatenate([up_labels + 100, labels])
  all_unc = np.concatenate([up_unc, unc])
  correct = _nn_correct(emb, mixed)
  assert found["auroc_correct_mixed"] == pytest.approx(roc_auc_score(correct, -all_unc))
  is_down = np.r_[np.zeros(200), np.ones(200)]
  assert found["auroc_ood"] == pytest.approx(roc_auc_score(is_down, all_unc))
  assert found["auroc_ood"] > 0.6


def test_mixed_class_ids_never_match_across_sets():
  # Upstream = an exact copy of downstream with the same class ids: every nearest
  # neighbour is the twin in the other set, which must never count as correct.
  x, labels = _clustered(5, 50)
  unc = np.random.default_rng(6).random(50)
  found = retrieval.mixed_metrics(x, labels, unc, x.copy(), labels.copy(), unc)
  assert np.isnan(found["auroc_correct_mixed"])  # All wrong: AUROC undefined.
  assert found["auroc_ood"] == pytest.approx(0.5)


def test_mixed_subsamples_to_equal_halves(monkeypatch):
  sizes = []
  real = retrieval.metrics.recall_at_one

  def spy(emb, labels, chunk_size):
    sizes.append(len(labels))
    return real(emb, labels, chunk_size)

  monkeypatch.setattr(retrieval.metrics, "recall_at_one", spy)
  x, labels = _clustered(7, 120)
  up_x, up_labels = _clustered(8, 300)
  unc = np.random.default_rng(9).random(420)
  retrieval.mixed_metrics(x, labels, unc[:120], up_x, up_labels, unc[120:])
  retrieval.mixed_metrics(x, labels, unc[:120], up_x, up_labels, unc[120:], max_examples=50)
  assert sizes == [240, 100]


def test_crop_metrics_by_hand():
  rng = np.random.default_rng(10)
  unc, unc_c, frac = rng.random(100), rng.random(100), rng.uniform(0.1, 0.75, 100)
  found = retrieval.crop_metrics(unc, unc_c, frac)
  assert found["croppedHasBiggerUnc"] == np.count_nonzero(unc_c > unc) / 100
  # URL: spearman(-cropped uncertainty, fraction kept).
  assert found["rcorr_crop_unc"] == pytest.approx(spearmanr(-unc_c, frac)[0], abs=1e-12)
  assert np.isnan(retrieval.crop_metrics(unc, np.ones(100), frac)["rcorr_crop_unc"])


def test_zoom_crop_op():
  img = np.zeros((8, 8, 1), np.uint8)
  img[2:6, 2:6] = 200  # The central half.
  out = parse_ops("zoom_crop(0.5)")({"image": tf.constant(img)})["image"].numpy()
  assert out.dtype == np.uint8 and out.shape == (8, 8, 1)
  np.testing.assert_array_equal(out, 200)  # Only the central half is left, zoomed.
  same = parse_ops("zoom_crop(1.0)")({"image": tf.constant(img)})["image"].numpy()
  np.testing.assert_array_equal(same, img)
  rng = np.random.default_rng(11)
  img = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
  ex = {"image": tf.constant(img), "crop_fraction": tf.constant(0.3)}
  out = parse_ops("zoom_crop")(ex)["image"].numpy()
  np.testing.assert_array_equal(out, _zoom_by_hand(img[None], [0.3])[0])
  floats = parse_ops("resize(10)|zoom_crop(0.6)")({"image": tf.constant(img)})["image"]
  assert floats.dtype == tf.float32 and floats.shape == (10, 10, 3)
  with pytest.raises(ValueError, match="needs example"):
    parse_ops("zoom_crop")({"image": tf.constant(img)})
  with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
    parse_ops("zoom_crop(1.5)")


def test_crop_fraction_source_by_position():
  base = get_source("digits")
  source = retrieval.CropFractionSource(base, 0.2, 0.4, seed=3)
  rows = list(source.load("test[:20]").as_numpy_iterator())
  fractions = source.fractions("test[:20]")
  np.testing.assert_array_equal([r["crop_fraction"] for r in rows], fractions)
  np.testing.assert_array_equal(fractions, retrieval.crop_fractions(20, 0.2, 0.4, 3))
  assert ((fractions >= 0.2) & (fractions < 0.4)).all() and len(set(fractions)) == 20
  np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), base.arrays("test[:20]")[0])


@pytest.fixture(scope="module")
def net():
  return FakeNet()


def test_mnist_to_fashion_mnist_end_to_end(net):
  """Offline: digits upstream, MNIST and Fashion-MNIST (resized to 8x8) downstream."""
  ev = RetrievalEvaluator(
    {"fmnist": ("fashion_mnist", "test[:300]"), "mnist": ("mnist", "test[:200]")},
    upstream=("digits", "test"),
    preprocess="resize(8)",
    crop_min=0.3,
    crop_max=0.9,
    quantiles=(0.5,),
  )
  predictor = Predictor(net, batch_size=64)
  found = ev.evaluate(predictor)
  want = {}
  for name, split in (("fmnist", "test[:300]"), ("mnist", "test[:200]")):
    images, labels = get_source("fashion_mnist" if name == "fmnist" else "mnist").arrays(split)
    out = direct(net, tf.image.resize(images, (8, 8)).numpy())
    correct = _nn_correct(out["embedding"].astype(np.float64), labels)
    unc = out["uncertainty"]
    frac = retrieval.crop_fractions(len(labels), 0.3, 0.9, 0)
    cropped = []  # The pipeline's float 8x8 images, center-cropped and resized by hand.
    for img, f in zip(tf.image.resize(images, (8, 8)).numpy(), frac):
      c = max(int(np.round(8 * f)), 1)
      t = (8 - c) // 2
      cropped.append(tf.image.resize(img[t : t + c, t : t + c], (8, 8)).numpy())
    unc_c = direct(net, np.stack(cropped))["uncertainty"]
    want[name] = {
      "r1": correct.mean(),
      "auroc_correct": roc_auc_score(correct, -unc),
      "croppedHasBiggerUnc": np.mean(unc_c > unc),
      "rcorr_crop_unc": spearmanr(-unc_c, frac)[0],
      "min_unc": unc.min(),
      "avg_unc": unc.mean(),
      "max_unc": unc.max(),
      "q50_unc": np.median(unc),
    }
  for name, w in want.items():
    for key, value in w.items():
      assert found[f"retrieval/{name}_{key}"] == pytest.approx(value, abs=2e-5), (name, key)
    assert 0 <= found[f"retrieval/{name}_auroc_ood"] <= 1
    assert f"retrieval/{name}_auroc_correct_mixed" in found
  for key in ("r1", "auroc_correct", "auroc_ood", "croppedHasBiggerUnc"):
    assert found[f"retrieval/avg_downstream_{key}"] == pytest.approx(
      (found[f"retrieval/fmnist_{key}"] + found[f"retrieval/mnist_{key}"]) / 2
    )
  assert not any("rcorr_entropy" in k for k in found)
  assert predictor.passes == 5  # Upstream once; each set and its crops once.
  # The same round again reuses the cached predictions; metrics are identical.
  assert ev.evaluate(predictor) == found and predictor.passes == 5


def test_soft_labels_cifar10h_mock(net):
  with tfds.testing.mock_data(num_examples=30):
    ev = RetrievalEvaluator(["cifar10h"], preprocess="resize(8)", crop=False)
    found = ev.evaluate(Predictor(net, batch_size=16))
    ds = tfds.builder("cifar10_h").as_dataset(split="test", shuffle_files=False)
    rows = list(ds.as_numpy_iterator())
  images = tf.image.resize(np.stack([r["image"] for r in rows]), (8, 8)).numpy()
  out = direct(net, images)
  labels = np.array([r["label"] for r in rows])
  soft = np.stack([r["soft_label"] for r in rows]).astype(np.float64)
  soft = soft / soft.sum(1, keepdims=True)
  correct = _nn_correct(out["embedding"].astype(np.float64), labels)
  assert found["retrieval/cifar10h_r1"] == pytest.approx(correct.mean())
  entropy = -np.sum(np.where(soft > 0, soft * np.log(np.maximum(soft, 1e-300)), 0), axis=1)
  assert found["retrieval/cifar10h_rcorr_entropy"] == pytest.approx(
    spearmanr(out["uncertainty"], entropy)[0], abs=1e-6
  )
  assert (
    found["retrieval/avg_downstream_rcorr_entropy"] == found["retrieval/cifar10h_rcorr_entropy"]
  )


def test_presets_and_names():
  ev = RetrievalEvaluator(
    ["cub", "cars", "sop", "tfds:dtd", ("fashion_mnist", "test[:10]")],
    preprocess="decode|resize(224)",
  )
  assert list(ev.datasets) == ["cub", "cars", "sop", "dtd", "fashion_mnist"]
  assert ev.datasets["cub"] == (
    "tfds:caltech_birds2011",
    "test",
    "decode|resize(224)",
    "label",
    None,
  )
  assert ev.datasets["sop"][3] == "class_id"
  assert ev.datasets["fashion_mnist"][:3] == ("fashion_mnist", "test[:10]", "decode|resize(224)")
  ev = RetrievalEvaluator({"birds": ("cub", "train", "resize(8)"), "h": "tfds:cifar10_h"})
  assert ev.datasets["birds"][:3] == ("tfds:caltech_birds2011", "train", "resize(8)")
  assert ev.datasets["h"][4] == "soft_label"


def test_bad_arguments():
  with pytest.raises(ValueError, match="at least one downstream dataset"):
    RetrievalEvaluator([])
  with pytest.raises(ValueError, match="must be unique"):
    RetrievalEvaluator(["mnist", ("mnist", "train")])
  with pytest.raises(ValueError, match="crop_min <= crop_max"):
    RetrievalEvaluator(["mnist"], crop_min=0.8, crop_max=0.5)
  with pytest.raises(ValueError, match="quantiles must lie"):
    RetrievalEvaluator(["mnist"], quantiles=(50,))
  with pytest.raises(ValueError, match="Expected \\(dataset, split\\)"):
    RetrievalEvaluator({"x": ("mnist", "test", "", "extra")})

  def no_embedding(dataset, split, preprocess=""):
    return {"uncertainty": np.zeros(4)}, np.zeros(4, np.int64)

  with pytest.raises(ValueError, match=r"lack \['embedding'\]"):
    RetrievalEvaluator(["digits"], crop=False).evaluate(no_embedding)


def test_never_builds_n_by_n():
  """6000 downstream + 6000 upstream embeddings: an N x N float64 matrix would be 288 MB
  (1.15 GB for the mixed set); the chunked search stays far below."""
  n = 6000
  x, labels = _clustered(12, n, dim=4, classes=3)
  up_x, up_labels = _clustered(13, n, dim=4, classes=3)
  rng = np.random.default_rng(14)
  data = {
    "down": ({"embedding": x.astype(np.float32), "uncertainty": rng.random(n)}, labels),
    "up": ({"embedding": up_x.astype(np.float32), "uncertainty": rng.random(n)}, up_labels),
  }

  def predict(dataset, split, preprocess=""):
    return data[dataset]

  ev = RetrievalEvaluator(
    {"d": ("down", "test")}, upstream=("up", "test"), crop=False, chunk_size=256
  )
  tracemalloc.start()
  found = ev.evaluate(predict)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert peak < 30e6, peak
  assert found["retrieval/d_r1"] == pytest.approx(retrieval.metrics.recall_at_one(x, labels)[0])


@pytest.mark.parametrize("chunk_size", [5, 64, 1000])
def test_recall_at_one_tf_matches_brute_force(chunk_size, monkeypatch):
  shapes = []
  real = retrieval._block_similarities

  def spy(q, c):
    shapes.append((int(q.shape[0]), int(c.shape[0])))
    return real(q, c)

  monkeypatch.setattr(retrieval, "_block_similarities", spy)
  x, labels = _clustered(15, 300, dim=8, classes=5)
  r1, mask = retrieval.recall_at_one_tf(x, labels, chunk_size)
  np.testing.assert_array_equal(mask, _nn_correct(x, labels))
  assert r1 == pytest.approx(mask.mean())
  # Blocks only: never a 300 x 300 similarity matrix (unless one chunk holds everything).
  assert max(a * b for a, b in shapes) <= min(chunk_size, 300) ** 2
  assert sum(a * b for a, b in shapes) == 300 * 300


def test_recall_at_one_tf_ties_and_errors():
  x = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
  _, mask = retrieval.recall_at_one_tf(x, np.array([0, 1, 0, 2, 3, 3]), chunk_size=2)
  # Ties go to the lowest index, the query excluded; the zero vector ties at 0 with all.
  np.testing.assert_array_equal(mask, [False, False, True, False, True, True])
  with pytest.raises(ValueError, match="N >= 2"):
    retrieval.recall_at_one_tf(x[:1], [0])
  with pytest.raises(ValueError, match="non-finite"):
    retrieval.recall_at_one_tf(np.array([[np.nan, 1.0], [1.0, 0.0]]), [0, 1])
  with pytest.raises(ValueError, match="Unknown nearest-neighbour backend"):
    RetrievalEvaluator(["mnist"], backend="faiss")


def test_tf_backend_evaluator_matches_numpy(net):
  ev = {
    b: RetrievalEvaluator(
      {"f": ("fashion_mnist", "test[:200]", "resize(8)")},
      upstream=("digits", "test"),
      crop=False,
      backend=b,
    )
    for b in retrieval.BACKENDS
  }
  predictor = Predictor(net, batch_size=100)
  found = {b: e.evaluate(predictor) for b, e in ev.items()}
  assert found["tf"].keys() == found["numpy"].keys()
  for k, v in found["numpy"].items():
    assert found["tf"][k] == pytest.approx(v, abs=1e-9), k
