"""AugMix and Random Erasing (`keras_unc.data.ops`): the AugMix operations against PIL (the
reference implementation's library), the mixing math, and the erased rectangle's bounds.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_unc.data import ops, parse_ops

Image = pytest.importorskip("PIL.Image")
ImageOps = pytest.importorskip("PIL.ImageOps")


def ex(image, rng=(1, 2)):
  return {
    "image": tf.constant(image),
    "label": tf.constant(1, tf.int64),
    "_rng": tf.constant(rng, tf.int64),
  }


def run(spec, image, rng=(1, 2)):
  return parse_ops(spec)(ex(image, rng))["image"].numpy()


RNG = np.random.default_rng(0)
IMG = RNG.integers(30, 220, size=(12, 16, 3), dtype=np.uint8)
IMG[2:5, 3:9] = 250  # Some structure for the histogram and the geometric ops.


def _pil(img):
  return Image.fromarray(img)


@pytest.mark.parametrize("level", [0.1, 2.9, 6.0, 9.99])  # Levels are < severity <= 10.
def test_augmix_pixel_ops_match_pil(level):
  got = {
    name: ops._AUGMIX_FNS[name](tf.constant(IMG), tf.constant(level)).numpy()
    for name in ops._AUGMIX_FNS
  }
  np.testing.assert_array_equal(got["autocontrast"], np.asarray(ImageOps.autocontrast(_pil(IMG))))
  np.testing.assert_array_equal(got["equalize"], np.asarray(ImageOps.equalize(_pil(IMG))))
  bits = 4 - int(level * 4 / 10)
  np.testing.assert_array_equal(got["posterize"], np.asarray(ImageOps.posterize(_pil(IMG), bits)))
  threshold = 256 - int(level * 256 / 10)
  np.testing.assert_array_equal(
    got["solarize"], np.asarray(ImageOps.solarize(_pil(IMG), threshold))
  )
  np.testing.assert_array_equal(got["identity"], IMG)


@pytest.mark.parametrize("level", [4.0, -7.5])
def test_augmix_translate_is_an_integer_shift_with_gray_fill(level):
  for axis in ("x", "y"):
    out = ops._AUGMIX_FNS[f"translate_{axis}"](tf.constant(IMG), tf.constant(level)).numpy()
    size = IMG.shape[1 if axis == "x" else 0]
    pixels = int(level * size / 3 / 10)  # Python int(): toward zero, as the reference.
    # PIL AFFINE (1, 0, p, 0, 1, 0): output x reads input x + p; outside is gray.
    want = np.full_like(IMG, 128)
    src = np.moveaxis(IMG, 0 if axis == "y" else 1, 0)
    dst = np.moveaxis(want, 0 if axis == "y" else 1, 0)
    for i in range(size):
      if 0 <= i + pixels < size:
        dst[i] = src[i + pixels]
    np.testing.assert_array_equal(out, want)


def test_augmix_geometric_ops_match_pil_inside():
  """Shear and rotation agree with PIL's bilinear transforms away from the border."""
  rows, cols = np.mgrid[:20, :20]
  img = np.repeat((10 * cols + 2 * rows)[..., None], 3, -1).astype(np.uint8)  # Steep in x.
  inner = (slice(6, 14), slice(6, 14))
  level = 5.0
  shear = 0.03 * level
  out = ops._AUGMIX_FNS["shear_x"](tf.constant(img), tf.constant(level)).numpy()
  want = _pil(img).transform(
    (20, 20), Image.AFFINE, (1, shear, 0, 0, 1, 0), resample=Image.BILINEAR, fillcolor=(128,) * 3
  )
  assert np.abs(out[inner].astype(int) - np.asarray(want)[inner]).max() <= 1
  degrees = int(level * 30 / 10)
  out = ops._AUGMIX_FNS["rotate"](tf.constant(img), tf.constant(level)).numpy()
  diffs = [
    np.abs(out[inner].astype(int) - np.asarray(_pil(img).rotate(d, resample=Image.BILINEAR))[inner])
    for d in (degrees, -degrees)
  ]
  assert min(d.max() for d in diffs) <= 1  # 14 degrees: 2.
  # Level below 1/3: int(3 * level) = 0 degrees, the identity.
  out = ops._AUGMIX_FNS["rotate"](tf.constant(img), tf.constant(0.2)).numpy()
  np.testing.assert_array_equal(out, img)


def test_augmix_identity_chains_return_the_input():
  for seed in range(4):
    out = run("augmix(ops=['identity'])", IMG, rng=(3, seed))
    assert out.dtype == np.float32 and out.shape == IMG.shape
    np.testing.assert_allclose(out, IMG.astype(np.float32), atol=1e-3)


def test_augmix_is_a_convex_combination():
  # Chains of identity / autocontrast only produce x or autocontrast(x) (idempotent), so each
  # output pixel lies between the two; across seeds the weights make values strictly inside.
  img = RNG.integers(60, 120, size=(8, 8, 3), dtype=np.uint8)
  ac = np.asarray(ImageOps.autocontrast(_pil(img))).astype(np.float32)
  lo, hi = np.minimum(img, ac), np.maximum(img, ac)
  strictly_inside = 0
  for seed in range(8):
    out = run("augmix(ops=['identity', 'autocontrast'])", img, rng=(5, seed))
    assert (out >= lo - 1e-3).all() and (out <= hi + 1e-3).all()
    strictly_inside += int(((out > lo + 0.5) & (out < hi - 0.5)).any())
  assert strictly_inside >= 4
  # A constant image stays constant under autocontrast and equalize: so does the mix.
  flat = np.full((6, 6, 1), 77, np.uint8)
  np.testing.assert_allclose(run("augmix(ops=['autocontrast', 'equalize'])", flat), 77, atol=1e-3)


def test_augmix_all_ops_range_and_determinism():
  outs = [run("augmix", IMG, rng=(9, s)) for s in range(6)]
  for out in outs:
    assert out.dtype == np.float32 and out.shape == IMG.shape
    assert out.min() >= 0.0 and out.max() <= 255.0
  np.testing.assert_array_equal(outs[0], run("augmix", IMG, rng=(9, 0)))  # Same seed.
  assert len({o.tobytes() for o in outs}) == len(outs)  # Seeds differ: outputs differ.
  # Fixed depth and width 1, float input (clipped and rounded to pixels first); gray images.
  out = run("augmix(severity=10, width=1, depth=2, alpha=0.5)", IMG[..., :1].astype(np.float32))
  assert out.shape == (12, 16, 1) and 0 <= out.min() and out.max() <= 255


def test_augmix_weights():
  # Beta(a, a) from two stateless Gamma draws: mean 1/2, variance 1 / (4 (2a + 1)).
  m = ops._stateless_beta(tf.constant([1, 2], tf.int64), 0.5, (20000,)).numpy()
  assert m.min() >= 0 and m.max() <= 1
  assert m.mean() == pytest.approx(0.5, abs=0.01)
  assert m.var() == pytest.approx(1 / 8, rel=0.05)


@pytest.mark.parametrize(
  "spec,match",
  [
    ("augmix(severity=0)", "severity"),
    ("augmix(width=0)", "width"),
    ("augmix(depth=0)", "depth"),
    ("augmix(alpha=0)", "alpha"),
    ("augmix(ops=['rotate', 'color'])", "color"),
    ("augmix(ops=[])", "none given"),
    ("random_erasing(1.5)", "probability"),
    ("random_erasing(area=(0.5, 0.2))", "area"),
    ("random_erasing(aspect=(0, 2))", "aspect"),
    ("random_erasing(mode='noise')", "mode"),
    ("random_erasing(attempts=0)", "attempts"),
  ],
)
def test_bad_arguments(spec, match):
  with pytest.raises(ValueError, match=match):
    parse_ops(spec)


def test_random_ops_need_rng():
  for name in ("augmix", "random_erasing"):
    with pytest.raises(ValueError, match="_rng"):
      parse_ops(name)({"image": tf.constant(IMG)})


def _erased_box(out, img):
  changed = np.any(out != img, axis=-1)
  rows, cols = np.nonzero(changed)
  return rows, cols, changed


def test_random_erasing_erases_one_rectangle_within_bounds():
  img = np.full((40, 50, 3), 200, np.uint8)
  seen = set()
  for seed in range(20):
    out = run("random_erasing(1.0, value=7)", img, rng=(11, seed))
    assert out.dtype == np.uint8 and out.shape == img.shape
    rows, cols, changed = _erased_box(out, img)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert changed.sum() == h * w  # A full rectangle ...
    assert (out[changed] == 7).all()  # ... of the fill value.
    # Rounded sides: the area and aspect bounds hold up to the rounding of h and w.
    assert (math.sqrt(0.02 * 2000) - 0.5) ** 2 <= h * w
    assert h * w <= (math.sqrt(2000 / 3) + 0.5) ** 2
    assert 0.3 * (w + 0.5) - 0.5 <= h <= 3.3 * (w + 0.5) + 0.5
    seen.add((rows.min(), cols.min(), h, w))
  assert len(seen) > 10
  np.testing.assert_array_equal(out, run("random_erasing(1.0, value=7)", img, rng=(11, 19)))


def test_random_erasing_probability_zero_and_no_fit_keep_the_image():
  for seed in range(5):
    np.testing.assert_array_equal(run("random_erasing(0.0)", IMG, rng=(2, seed)), IMG)
  # No rectangle of the whole area with aspect >= 3 fits: the image is kept.
  np.testing.assert_array_equal(run("random_erasing(1.0, area=(1, 1), aspect=(3, 4))", IMG), IMG)
  erased = sum(
    not np.array_equal(run("random_erasing(0.5, value=0)", IMG, rng=(4, s)), IMG) for s in range(40)
  )
  assert 10 <= erased <= 30  # About half of the images.


def test_random_erasing_fill_modes():
  img = np.zeros((30, 30, 3), np.float32)
  out = run("random_erasing(1.0, mode='rand', mean=0.0, std=1.0)", img)
  assert out.dtype == np.float32
  _, _, changed = _erased_box(out, img)
  per_channel = out[changed]
  np.testing.assert_array_equal(per_channel, np.broadcast_to(per_channel[0], per_channel.shape))
  out = run("random_erasing(1.0, mode='pixel', mean=0.0, std=1.0)", img)
  values = out[np.any(out != 0, -1)]
  assert values.std() == pytest.approx(1.0, rel=0.3) and len(np.unique(values)) > 20
  # uint8 images: the normal fill is rounded and clipped to [0, 255].
  out = run("random_erasing(1.0, mode='pixel', mean=128.0, std=500.0)", IMG)
  assert out.dtype == np.uint8 and {0, 255} <= set(np.unique(out))
