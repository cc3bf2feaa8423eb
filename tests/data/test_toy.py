"""The `toy:` source (two moons, two ovals) and the annulus sampler (`keras_unc.data.toy`)."""

import gin
import numpy as np
import pytest

from keras_unc.data import get_source, make_dataset
from keras_unc.data.toy import annulus, toy_data, two_moons, two_ovals


def test_two_moons_geometry_and_determinism():
  x, y = two_moons(400, noise=0.0, seed=3)
  assert x.shape == (400, 2) and x.dtype == np.float32 and y.dtype == np.int64
  np.testing.assert_array_equal(y, np.arange(400) % 2)
  # Noise-free: class 0 on the unit upper half circle around (-0.1, 0.2), class 1 on the
  # lower half circle of radius 1 around (1.1, 0.3).
  r0 = np.linalg.norm(x[y == 0] - [-0.1, 0.2], axis=1)
  r1 = np.linalg.norm(x[y == 1] - [1.1, 0.3], axis=1)
  np.testing.assert_allclose(r0, 1.0, atol=1e-5)
  np.testing.assert_allclose(r1, 1.0, atol=1e-5)
  assert (x[y == 0, 1] >= 0.2 - 1e-6).all() and (x[y == 1, 1] <= 0.3 + 1e-6).all()
  again, _ = two_moons(400, noise=0.0, seed=3)
  np.testing.assert_array_equal(x, again)
  other, _ = two_moons(400, noise=0.0, seed=4)
  assert not np.array_equal(x, other)
  noisy, _ = two_moons(2000, noise=0.1, seed=0)
  clean, _ = two_moons(2000, noise=0.0, seed=0)
  assert np.std(noisy - clean) == pytest.approx(0.1, rel=0.05)


def test_two_ovals():
  x, y = two_ovals(4000, noise=0.0, seed=0)
  np.testing.assert_allclose(x[y == 0].mean(0), [-1, 0], atol=0.06)
  np.testing.assert_allclose(x[y == 1].std(0), [0.3, 1.0], rtol=0.06)


def test_annulus_is_uniform_by_area():
  center = np.array([0.5, 0.25])
  x = annulus(20000, 3.0, 6.0, center=center, seed=1)
  assert x.shape == (20000, 2) and x.dtype == np.float32
  r = np.linalg.norm(x - center, axis=1)
  assert r.min() >= 3.0 - 1e-5 and r.max() <= 6.0 + 1e-5
  # Uniform by area: P(r <= 4.5) = (4.5^2 - 9) / (36 - 9) = 0.4167 (uniform radius: 0.5).
  assert np.mean(r <= 4.5) == pytest.approx((4.5**2 - 9) / 27, abs=0.015)
  np.testing.assert_allclose(x.mean(0), center, atol=0.1)  # No preferred direction.
  np.testing.assert_array_equal(x, annulus(20000, 3.0, 6.0, center=center, seed=1))


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda: annulus(10, 6.0, 3.0), "inner < outer"),
    (lambda: annulus(0, 3.0, 6.0), "num_examples"),
    (lambda: two_moons(1), "num_examples"),
    (lambda: two_moons(10, noise=-1.0), "noise"),
    (lambda: toy_data("spirals"), "toy:two_moons"),
    (lambda: get_source("toy:spirals"), "toy:two_moons"),
  ],
)
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_source_splits_and_pipeline():
  gin.parse_config("toy_test/toy_data.num_train = 100\ntoy_test/toy_data.num_test = 30")
  try:
    with gin.config_scope("toy_test"):
      src = get_source("toy:two_moons")
  finally:
    gin.clear_config()
  assert (src.num_classes, src.image_shape, src.random_access) == (2, (1, 1, 2), True)
  assert src.num_examples("train") == 100 and src.num_examples("test[:10]") == 10
  x, y = src.arrays("train")
  assert x.shape == (100, 1, 1, 2) and x.dtype == np.float32
  data = toy_data("two_moons", 100, 30)
  np.testing.assert_array_equal(x[:, 0, 0], data["train"][0])
  assert not np.array_equal(src.arrays("test")[0][:, 0, 0], data["train"][0][:30])
  # Through the generic pipeline: rank-4 float batches, labels in range, resumable order.
  ds = make_dataset(src, "train", "", 16, train=True, seed=0)
  images, labels = next(iter(ds))
  assert tuple(images.shape) == (16, 1, 1, 2) and set(np.asarray(labels)) <= {0, 1}
  third = list(ds.take(3))[2]
  resumed = next(iter(make_dataset(src, "train", "", 16, train=True, seed=0, start_step=2)))
  np.testing.assert_array_equal(np.asarray(third[0]), np.asarray(resumed[0]))
