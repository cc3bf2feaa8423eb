"""Tests for the preprocessing-op registry and each op's math (hand-made tensors)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_unc.data import ops, parse_ops, registered_ops


def ex(image, label=1, rng=(1, 2)):
  return {
    "image": tf.constant(image),
    "label": tf.constant(label, tf.int64),
    "_rng": tf.constant(rng, tf.int64),
  }


IMG = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6, 1)


def run(spec, example):
  return {k: v.numpy() for k, v in parse_ops(spec)(example).items()}


def test_empty_spec_is_identity():
  e = ex(IMG)
  assert parse_ops("")(e) is e and parse_ops(" | ")(e) is e


def test_decode():
  png = tf.io.encode_png(tf.constant(IMG))
  out = run("decode", {"image": png})
  np.testing.assert_array_equal(out["image"], IMG)
  np.testing.assert_array_equal(run("decode", ex(IMG))["image"], IMG)  # no-op


def test_resize():
  out = run("resize(1, 4)", ex(np.array([[[0], [4]]], np.uint8)))["image"]
  # Half-pixel centres sample x = -.25, .25, .75, 1.25 (clamped) -> 0, 1, 3, 4.
  np.testing.assert_allclose(out[0, :, 0], [0, 1, 3, 4])
  assert out.dtype == np.float32
  assert run("resize(3)", ex(IMG))["image"].shape == (3, 3, 1)
  assert run("resize((2, 7))", ex(IMG))["image"].shape == (2, 7, 1)


def test_central_crop():
  np.testing.assert_array_equal(run("central_crop(3)", ex(IMG))["image"], IMG[1:4, 1:4])
  np.testing.assert_array_equal(run("central_crop(2, 4)", ex(IMG))["image"], IMG[1:3, 1:5])


def windows(img, h, w):
  return [
    img[i : i + h, j : j + w]
    for i in range(img.shape[0] - h + 1)
    for j in range(img.shape[1] - w + 1)
  ]


def outputs(spec, n=12, image=IMG):
  return [run(spec, ex(image, rng=(7, i)))["image"] for i in range(n)]


def test_random_crop():
  outs = outputs("random_crop(3, 4)")
  for o in outs:  # every output is a window of the input
    assert any(np.array_equal(o, w) for w in windows(IMG, 3, 4))
  assert len({o.tobytes() for o in outs}) > 1
  np.testing.assert_array_equal(outs[0], outputs("random_crop(3, 4)", 1)[0])  # same rng


def test_flip_lr():
  outs = outputs("flip_lr", 16)
  flipped = [np.array_equal(o, IMG[:, ::-1]) for o in outs]
  assert all(f or np.array_equal(o, IMG) for f, o in zip(flipped, outs))
  assert 0 < sum(flipped) < 16
  assert [np.array_equal(o, IMG[:, ::-1]) for o in outputs("flip_lr", 16)] == flipped


def test_random_ops_use_distinct_streams():
  # Two flips from the same example seed must not always cancel out.
  outs = outputs("flip_lr|flip_lr", 16)
  assert any(not np.array_equal(o, IMG) for o in outs)


def test_inception_crop():
  # area 100% and an aspect ratio within [3/4, 4/3]: the whole image.
  full = run("inception_crop((5, 6), area_min=100)", ex(IMG))["image"]
  np.testing.assert_allclose(full, IMG)
  outs = outputs("inception_crop(4, area_min=20)")
  assert all(o.shape == (4, 4, 1) and o.dtype == np.float32 for o in outs)
  assert len({o.tobytes() for o in outs}) > 1
  np.testing.assert_array_equal(outs[3], outputs("inception_crop(4, area_min=20)", 4)[3])
  raw = outputs("inception_crop(None)", 3)  # no resize: a uint8 window
  assert all(
    o.dtype == np.uint8 and any(np.array_equal(o, w) for w in windows(IMG, *o.shape[:2]))
    for o in raw
  )


def test_value_range():
  img = np.array([[[0], [51], [255]]], np.uint8)
  np.testing.assert_allclose(run("value_range(-1, 1)", ex(img))["image"][0, :, 0], [-1, -0.6, 1])
  out = run("value_range(0, 1, in_min=51, in_max=102, clip_values=True)", ex(img))["image"]
  np.testing.assert_allclose(out[0, :, 0], [0, 0, 1])
  assert out.dtype == np.float32


def test_gray_to_rgb():
  out = run("gray_to_rgb", ex(IMG))["image"]
  assert out.shape == (5, 6, 3) and all(np.array_equal(out[..., c], IMG[..., 0]) for c in range(3))
  np.testing.assert_array_equal(run("gray_to_rgb", ex(out))["image"], out)


def test_onehot():
  np.testing.assert_allclose(run("onehot(4)", ex(IMG, 2))["label"], [0, 0, 1, 0])
  out = run("onehot(4, label_smoothing=0.1)", ex(IMG, 2))["label"]
  np.testing.assert_allclose(out, [0.025, 0.025, 0.925, 0.025], rtol=1e-6)
  assert out.dtype == np.float32
  e = {"image": tf.constant(IMG), "y": tf.constant(0)}
  np.testing.assert_allclose(run("onehot(2, key='y')", e)["y"], [1, 0])


def test_keep():
  e = dict(ex(IMG), extra=tf.constant(1))
  assert set(parse_ops("keep('image', 'label')")(e)) == {"image", "label", "_rng"}
  with pytest.raises(ValueError, match="missing keys \\['nope'\\]"):
    parse_ops("keep('image', 'nope')")(e)


def test_randaugment_runs():
  out = run("randaugment(num_ops=2, magnitude=5)", ex(np.tile(IMG, (1, 1, 3))))["image"]
  assert out.shape == (5, 6, 3) and out.dtype == np.float32
  assert 0 <= out.min() and out.max() <= 255


def test_randaugment_after_decode_without_channels_names_the_fix():
  png = tf.io.encode_png(np.tile(IMG, (1, 1, 3)))
  fn = parse_ops("decode|randaugment(2, 5)")
  traced = tf.function(fn, input_signature=[{"image": tf.TensorSpec([], tf.string)}])
  with pytest.raises(ValueError, match=r"known number of channels.*'decode\(3\)\|\.\.\.'"):
    traced.get_concrete_function()
  fixed = tf.function(parse_ops("decode(3)|randaugment(2, 5)"))({"image": png})["image"]
  assert fixed.shape == (5, 6, 3)


def batch(rng=(3, 4), n=4):
  x = np.stack([np.full((6, 6, 1), 10 * i, np.uint8) for i in range(n)])
  return {
    "image": tf.constant(x),
    "label": tf.range(n, dtype=tf.int64),
    "_rng": tf.constant([[rng[0], rng[1] + i] for i in range(n)], tf.int64),
  }, x


def apply_batched(spec, b):
  p = parse_ops(spec)
  return {k: v.numpy() for k, v in p.batch_fn(p.example_fn(b)).items()}


def test_mixup_math_and_determinism():
  b, x = batch()
  out = apply_batched("onehot(4)|mixup(alpha=1.0)", b)
  lab = out["label"]
  np.testing.assert_allclose(lab.sum(1), 1, rtol=1e-6)
  # Example i has class i: labels hold the mixing weights of the images.
  want = np.einsum("ij,jhwc->ihwc", lab, x.astype(np.float32))
  np.testing.assert_allclose(out["image"], want, rtol=1e-5, atol=1e-4)
  again = apply_batched("onehot(4)|mixup(alpha=1.0)", batch()[0])
  np.testing.assert_array_equal(again["label"], lab)
  other = apply_batched("onehot(4)|mixup(alpha=1.0)", batch(rng=(5, 4))[0])
  assert not np.array_equal(other["label"], lab)


def test_cutmix():
  outs = [apply_batched("onehot(4)|cutmix", batch(rng=(s, 0))[0]) for s in range(4)]
  mixed = 0
  for out in outs:
    for img, lab in zip(out["image"], out["label"]):
      # Pixels come from the classes (here: pixel values) the label mixes.
      assert set(np.unique(img)) <= {10.0 * c for c in np.nonzero(lab)[0]}
      mixed += np.count_nonzero(lab) > 1
  assert mixed > 0
  np.testing.assert_array_equal(
    apply_batched("onehot(4)|cutmix", batch(rng=(2, 0))[0])["image"], outs[2]["image"]
  )


def test_batch_ops_need_onehot():
  with pytest.raises(ValueError, match="one-hot.*onehot"):
    apply_batched("mixup", batch()[0])


def test_batch_ops_are_split_out():
  p = parse_ops("flip_lr|onehot(10)|mixup|cutmix")
  assert (len(p.example_ops), len(p.batch_ops)) == (2, 2)
  with pytest.raises(ValueError, match="batch-level ops"):
    p(ex(IMG))
  with pytest.raises(ValueError, match="after a batch-level op"):
    parse_ops("onehot(10)|mixup|flip_lr")


def test_unknown_op():
  with pytest.raises(ValueError, match="Unknown preprocessing op 'flip_rl'.*'flip_lr'") as e:
    parse_ops("decode|flip_rl")
  assert ", ".join(registered_ops()) in str(e.value)
  assert registered_ops() == sorted(registered_ops())


@pytest.mark.parametrize(
  "spec, match",
  [
    ("resize(1, 2, 3, 4)", r"op 'resize'.*\(1, 2, 3, 4\).*signature: resize\(size, width"),
    ("resize(foo)", r"Cannot parse arguments of op 'resize'.*literals.*signature"),
    ("onehot(10, label_smoothing=1.5)", r"op 'onehot'.*label_smoothing.*signature: onehot\("),
    ("flip_lr(p=0.5)", r"op 'flip_lr'.*p=0.5.*signature: flip_lr\(\)"),
    ("resize(0)", r"op 'resize'.*positive"),
    ("resize(", "Malformed"),
  ],
)
def test_bad_arguments(spec, match):
  with pytest.raises(ValueError, match=match):
    parse_ops(spec)


def test_random_op_without_rng():
  with pytest.raises(ValueError, match=r"'flip_lr' is random.*_rng"):
    parse_ops("flip_lr")({"image": tf.constant(IMG)})


def test_register_custom_op():
  @ops.register("test_add")
  def add(v=1):
    return lambda e: {**e, "image": e["image"] + v}

  try:
    assert int(parse_ops("test_add(2)")(ex(IMG))["image"][0, 0, 0]) == 2
    with pytest.raises(ValueError, match="already registered"):
      ops.register("test_add")(add)
  finally:
    ops._REGISTRY.pop("test_add")
