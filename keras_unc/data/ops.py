"""Preprocessing ops registered by name and composed from a string (big_vision style).

    parse_ops("decode|resize(32)|flip_lr|value_range(-1, 1)|onehot(10)")

Each op is a factory `factory(*args, **kwargs) -> fn(example: dict) -> dict`,
registered with `@register("name")`; arguments are Python literals. Ops work on
`example["image"]` unless they take a `key`.

Value ranges: images stay uint8 in their raw range unless an op converts them.
The models resize and normalise raw images themselves, so the usual training
string is "" (or augmentation only, e.g. "flip_lr"); `value_range` is for users
who normalise in the pipeline. Geometric ops (`resize`, `inception_crop`)
return float32 in the input's value range (not rounded).

Randomness is stateless and resumable: `make_dataset` puts a per-example seed
`example["_rng"]` (int32/int64 [2], derived from the seed and the position in
the stream) and removes it at the end. Each random op splits that seed, so two
random ops never share a stream. Batch ops (`mixup`, `cutmix`; registered with
`batched=True`) run after batching on a batch seed derived from the first
example's `_rng`. Only `randaugment` is NOT stateless (see its docstring); `augmix` and
`random_erasing` are.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import re
from collections.abc import Callable

import tensorflow as tf

Fn = Callable[[dict], dict]


@dataclasses.dataclass(frozen=True)
class _Op:
  factory: Callable[..., Fn]
  batched: bool


_REGISTRY: dict[str, _Op] = {}


def register(name: str, batched: bool = False):
  """Decorator registering an op factory; `batched` ops run after batching."""

  def deco(factory):
    if name in _REGISTRY:
      raise ValueError(f"Preprocessing op {name!r} is already registered.")
    _REGISTRY[name] = _Op(factory, batched)
    return factory

  return deco


def registered_ops() -> list[str]:
  return sorted(_REGISTRY)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Parsed op string: per-example ops, then batch-level ops."""

  spec: str
  example_ops: tuple = ()
  batch_ops: tuple = ()

  def example_fn(self, example: dict) -> dict:
    for fn in self.example_ops:
      example = fn(example)
    return example

  def batch_fn(self, batch: dict) -> dict:
    for fn in self.batch_ops:
      batch = fn(batch)
    return batch

  def __call__(self, example: dict) -> dict:
    if self.batch_ops:
      raise ValueError(
        f"{self.spec!r} has batch-level ops: apply .example_fn per example and .batch_fn per batch."
      )
    return self.example_fn(example)


_OP_RE = re.compile(r"^([A-Za-z_]\w*)\s*(?:\((.*)\))?$", re.S)


def _parse_args(name: str, argstr: str) -> tuple[list, dict]:
  try:
    call = ast.parse(f"f({argstr})", mode="eval").body
    if any(k.arg is None for k in call.keywords):
      raise ValueError("**kwargs not supported")
    return (
      [ast.literal_eval(a) for a in call.args],
      {k.arg: ast.literal_eval(k.value) for k in call.keywords},
    )
  except (SyntaxError, ValueError) as e:
    sig = inspect.signature(_REGISTRY[name].factory)
    raise ValueError(
      f"Cannot parse arguments of op {name!r}: ({argstr}) "
      f"[{e}]. Arguments must be Python literals; "
      f"signature: {name}{sig}"
    ) from None


def _build(part: str) -> tuple[Fn, bool]:
  m = _OP_RE.match(part)
  if not m:
    raise ValueError(f"Malformed preprocessing op {part!r}: expected 'name' or 'name(args)'.")
  name, argstr = m.group(1), m.group(2) or ""
  if name not in _REGISTRY:
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
      f"Unknown preprocessing op {name!r}.{hint} Registered ops: {', '.join(registered_ops())}."
    )
  op = _REGISTRY[name]
  args, kwargs = _parse_args(name, argstr)
  sig = inspect.signature(op.factory)
  try:
    sig.bind(*args, **kwargs)
    return op.factory(*args, **kwargs), op.batched
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"Bad arguments for op {name!r}: ({argstr}) [{e}]; signature: {name}{sig}"
    ) from e


def parse_ops(spec: str) -> Preprocess:
  """Parses "op1|op2(args)|..." into a `Preprocess` (callable per example).

  Batch-level ops must come after all per-example ops: they run after
  batching, so any other order would be misleading.
  """
  example_ops, batch_ops = [], []
  for part in (p.strip() for p in spec.split("|")):
    if not part:
      continue
    fn, batched = _build(part)
    if not batched and batch_ops:
      raise ValueError(
        f"Per-example op {part!r} comes after a batch-level op "
        f"in {spec!r}; put batch-level ops "
        f"({', '.join(k for k, v in _REGISTRY.items() if v.batched)})"
        " last."
      )
    (batch_ops if batched else example_ops).append(fn)
  return Preprocess(spec, tuple(example_ops), tuple(batch_ops))


# ----------------------------------------------------------------- helpers


def _take_rng(example: dict, op: str) -> tuple[dict, tf.Tensor]:
  """Splits example["_rng"]: returns (example with new _rng, seed for op)."""
  if "_rng" not in example:
    raise ValueError(
      f"Op {op!r} is random and needs example['_rng'], a stateless seed "
      "(int32/int64 [2]) that make_dataset adds; when calling ops directly "
      "add one, e.g. example['_rng'] = tf.constant([0, 1], tf.int64)."
    )
  rng = example["_rng"]
  if rng.shape.rank == 2:  # batched: derive the batch seed from row 0
    new, sub = tf.unstack(tf.random.experimental.stateless_split(rng[0], 2))
    return {**example, "_rng": tf.concat([new[None], rng[1:]], 0)}, sub
  new, sub = tf.unstack(tf.random.experimental.stateless_split(rng, 2))
  return {**example, "_rng": new}, sub


def _hw(size, width=None) -> tuple[int, int]:
  if width is not None:
    size = (size, width)
  elif isinstance(size, int):
    size = (size, size)
  if (
    not isinstance(size, (tuple, list))
    or len(size) != 2
    or not all(isinstance(s, int) and s > 0 for s in size)
  ):
    raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
  return tuple(size)


def _with_image(example: dict, image: tf.Tensor) -> dict:
  return {**example, "image": image}


# ----------------------------------------------------------------- per-example ops


@register("decode")
def decode(channels: int = 0):
  """Decodes encoded JPEG/PNG/... strings to uint8; no-op on decoded images.

  channels=0 keeps the stored number of channels, which is then unknown while tracing:
  ops that need it (`randaugment`) want `decode(3)` (RGB, as ImageNet) or `decode(1)`.
  """

  def fn(ex):
    img = ex["image"]
    if img.dtype == tf.string:
      img = tf.io.decode_image(img, channels=channels, expand_animations=False)
    return _with_image(ex, img)

  return fn


@register("resize")
def resize(size, width: int | None = None, method: str = "bilinear"):
  """`resize(size)` or `resize(h, w)`: float32 output in the input's value range."""
  h, w = _hw(size, width)

  def fn(ex):
    return _with_image(ex, tf.image.resize(ex["image"], (h, w), method=method))

  return fn


@register("random_crop")
def random_crop(size, width: int | None = None):
  """Uniformly placed crop of (h, w); keeps dtype. Image must be large enough."""
  h, w = _hw(size, width)

  def fn(ex):
    ex, seed = _take_rng(ex, "random_crop")
    img = ex["image"]
    img = tf.image.stateless_random_crop(img, [h, w, tf.shape(img)[-1]], seed=seed)
    return _with_image(ex, img)

  return fn


@register("central_crop")
def central_crop(size, width: int | None = None):
  """Central (h, w) crop; odd margins put the extra pixel bottom/right."""
  h, w = _hw(size, width)

  def fn(ex):
    img = ex["image"]
    shape = tf.shape(img)
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    img = img[top : top + h, left : left + w]
    img.set_shape([h, w, ex["image"].shape[-1]])
    return _with_image(ex, img)

  return fn


@register("zoom_crop")
def zoom_crop(fraction: float | None = None, key: str = "crop_fraction"):
  """Central crop keeping `fraction` of the height and width, resized back.

  The image keeps its size and dtype (integer images are rounded), so the crop
  can follow any other op. Without `fraction`, each example's own fraction is
  read from `example[key]` (the URL benchmark's per-image random crops, see
  `keras_unc.evaluators.retrieval.CropFractionSource`).
  """
  if fraction is not None and not 0 < fraction <= 1:
    raise ValueError(f"zoom_crop fraction must be in (0, 1], got {fraction}.")

  def fn(ex):
    if fraction is None and key not in ex:
      raise ValueError(
        f"zoom_crop() without a fraction needs example[{key!r}]; pass one, e.g. zoom_crop(0.5)."
      )
    img = ex["image"]
    f = tf.cast(fraction if fraction is not None else ex[key], tf.float32)
    hw = tf.shape(img)[:2]
    size = tf.maximum(tf.cast(tf.round(tf.cast(hw, tf.float32) * f), tf.int32), 1)
    top_left = (hw - size) // 2
    crop = tf.slice(img, tf.concat([top_left, [0]], 0), tf.concat([size, [-1]], 0))
    out = tf.image.resize(crop, hw)
    if img.dtype.is_integer:
      out = tf.saturate_cast(tf.round(out), img.dtype)
    else:
      out = tf.cast(out, img.dtype)
    out.set_shape(img.shape)
    return _with_image(ex, out)

  return fn


@register("inception_crop")
def inception_crop(size=None, area_min: float = 5, area_max: float = 100):
  """Random crop of area_min..area_max percent (aspect 3/4..4/3), then resize.

  As in big_vision/Inception; size=None skips the resize (keeps dtype).
  """
  hw = _hw(size) if size is not None else None
  if not 0 < area_min <= area_max <= 100:
    raise ValueError("need 0 < area_min <= area_max <= 100")

  def fn(ex):
    ex, seed = _take_rng(ex, "inception_crop")
    img = ex["image"]
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(img),
      tf.zeros([0, 0, 4], tf.float32),
      seed=seed,
      area_range=(area_min / 100, area_max / 100),
      min_object_covered=0,
      use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(img, begin, crop_size)
    crop.set_shape([None, None, img.shape[-1]])
    if hw:
      crop = tf.image.resize(crop, hw)
    return _with_image(ex, crop)

  return fn


@register("flip_lr")
def flip_lr():
  """Random horizontal flip with probability 1/2."""

  def fn(ex):
    ex, seed = _take_rng(ex, "flip_lr")
    return _with_image(ex, tf.image.stateless_random_flip_left_right(ex["image"], seed))

  return fn


@register("value_range")
def value_range(
  vmin: float, vmax: float, in_min: float = 0, in_max: float = 255, clip_values: bool = False
):
  """Linearly maps [in_min, in_max] to [vmin, vmax], as float32."""
  if in_max == in_min:
    raise ValueError("in_min and in_max must differ")

  def fn(ex):
    img = (tf.cast(ex["image"], tf.float32) - in_min) / (in_max - in_min)
    img = vmin + img * (vmax - vmin)
    if clip_values:
      img = tf.clip_by_value(img, min(vmin, vmax), max(vmin, vmax))
    return _with_image(ex, img)

  return fn


@register("gray_to_rgb")
def gray_to_rgb():
  """Repeats a single channel 3 times; no-op on 3-channel images."""

  def fn(ex):
    img = ex["image"]
    c = img.shape[-1]
    if c == 3:
      return ex
    if c not in (1, None):
      raise ValueError(f"gray_to_rgb needs 1 or 3 channels, got {c}")
    img = tf.tile(img, [1, 1, 3 // tf.shape(img)[-1]])  # 1 -> 3, 3 -> 3
    img.set_shape(img.shape[:-1].concatenate([3]))
    return _with_image(ex, img)

  return fn


@register("onehot")
def onehot(num_classes: int, label_smoothing: float = 0.0, key: str = "label"):
  """float32 one-hot of ex[key]: (1 - ls) * onehot + ls / num_classes."""
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  if not 0 <= label_smoothing < 1:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  off = label_smoothing / num_classes
  on = 1.0 - label_smoothing + off

  def fn(ex):
    return {
      **ex,
      key: tf.one_hot(ex[key], num_classes, on_value=on, off_value=off, dtype=tf.float32),
    }

  return fn


@register("keep")
def keep(*keys: str):
  """Keeps only `keys` (and the internal `_rng`, which the pipeline drops)."""

  def fn(ex):
    missing = [k for k in keys if k not in ex]
    if missing:
      raise ValueError(
        f"keep{keys}: missing keys {missing}; example has {sorted(k for k in ex if k != '_rng')}"
      )
    return {k: ex[k] for k in keys + (("_rng",) if "_rng" in ex else ())}

  return fn


@register("randaugment")
def randaugment(num_ops: int = 2, magnitude: float = 10):
  """keras.layers.RandAugment on [0, 255] images; returns float32.

  magnitude in [0, 10] maps to Keras' factor = magnitude / 10. NOT
  stateless: it draws from the layer's own Keras SeedGenerator, so it is not
  reproducible across runs or after resume (it ignores `_rng`).
  """
  import keras

  if not 0 <= magnitude <= 10:
    raise ValueError(f"magnitude must be in [0, 10], got {magnitude}")
  layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=num_ops, factor=magnitude / 10)

  def fn(ex):
    image = ex["image"]
    if image.shape.rank is not None and image.shape[-1] is None:
      raise ValueError(
        f"randaugment needs a known number of channels; got images of shape {image.shape}. "
        "Decode encoded images with explicit channels, e.g. 'decode(3)|...' for RGB."
      )
    return _with_image(ex, layer(image))

  return fn


# ----------------------------------------------------------------- AugMix, Random Erasing

# The AugMix operations (Hendrycks et al. 2020, `augmentations.augmentations`): no color,
# contrast, brightness or sharpness, which overlap with the corruptions of CIFAR-C/ImageNet-C.
AUGMIX_OPS = (
  "autocontrast",
  "equalize",
  "posterize",
  "rotate",
  "solarize",
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
)
_AUGMIX_FILL = 128.0  # Gray where a geometric op leaves the image (ub and timm).


def _autocontrast(img, level):
  """Per channel, maps [min, max] to [0, 255] (PIL `ImageOps.autocontrast`, cutoff 0)."""
  del level
  x = tf.cast(img, tf.float32)
  lo = tf.reduce_min(x, axis=(0, 1), keepdims=True)
  hi = tf.reduce_max(x, axis=(0, 1), keepdims=True)
  scaled = (x - lo) * (255.0 / tf.maximum(hi - lo, 1.0))
  out = tf.where(hi > lo, tf.floor(tf.clip_by_value(scaled, 0.0, 255.0)), x)
  return tf.cast(out, tf.uint8)


def _equalize(img, level):
  """Per-channel histogram equalisation (PIL `ImageOps.equalize`, as ub's TF version)."""
  del level

  def channel(c):
    c = tf.cast(c, tf.int32)
    histo = tf.histogram_fixed_width(c, [0, 255], nbins=256)
    nonzero = tf.boolean_mask(histo, histo > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe = tf.maximum(step, 1)
    lut = (tf.cumsum(histo) + safe // 2) // safe
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.where(step > 0, tf.gather(lut, c), c)

  out = tf.map_fn(channel, tf.transpose(img, [2, 0, 1]), fn_output_signature=tf.int32)
  return tf.cast(tf.transpose(out, [1, 2, 0]), tf.uint8)


def _posterize(img, level):
  """Keeps the top `4 - int(0.4 level)` bits of every pixel."""
  shift = 8 - (4 - tf.cast(level * 4 / 10, tf.int32))
  x = tf.cast(img, tf.int32)
  return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift), tf.uint8)


def _solarize(img, level):
  """Inverts pixels >= threshold `256 - int(25.6 level)` (PIL `ImageOps.solarize`)."""
  threshold = 256 - tf.cast(level * 256 / 10, tf.int32)
  x = tf.cast(img, tf.int32)
  return tf.cast(tf.where(x < threshold, x, 255 - x), tf.uint8)


def _project(img, transform):
  """Bilinear projective transform (output pixel -> input pixel), gray outside."""
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=tf.cast(img, tf.float32)[None],
    transforms=tf.cast(tf.reshape(transform, [1, 8]), tf.float32),
    output_shape=tf.shape(img)[:2],
    fill_value=_AUGMIX_FILL,
    interpolation="BILINEAR",
    fill_mode="CONSTANT",
  )[0]
  return tf.saturate_cast(tf.round(out), tf.uint8)


def _rotate(img, level):
  """Rotation by `int(3 level)` degrees (sign drawn by the caller) about the centre."""
  theta = tf.cast(tf.cast(level * 30 / 10, tf.int32), tf.float32) * (math.pi / 180)
  h, w = (tf.cast(s - 1, tf.float32) for s in tf.unstack(tf.shape(img)[:2]))
  cos, sin = tf.cos(theta), tf.sin(theta)
  dx = (w - (cos * w - sin * h)) / 2
  dy = (h - (sin * w + cos * h)) / 2
  return _project(img, tf.stack([cos, -sin, dx, sin, cos, dy, 0.0, 0.0]))


def _shear(axis):
  def op(img, level):
    s = level * 0.3 / 10
    z = tf.zeros_like(s)
    one = tf.ones_like(s)
    t = [one, s, z, z, one, z, z, z] if axis == "x" else [one, z, z, s, one, z, z, z]
    return _project(img, tf.stack(t))

  return op


def _translate(axis):
  def op(img, level):
    size = tf.cast(tf.shape(img)[1 if axis == "x" else 0], tf.float32)
    # int(level * size / 3 / 10) pixels, keeping the caller's sign.
    pixels = tf.sign(level) * tf.floor(tf.abs(level) * size / 3 / 10)
    z = tf.zeros_like(pixels)
    one = tf.ones_like(pixels)
    t = [one, z, pixels, z, one, z, z, z] if axis == "x" else [one, z, z, z, one, pixels, z, z]
    return _project(img, tf.stack(t))

  return op


_AUGMIX_FNS = {
  "identity": lambda img, level: img,
  "autocontrast": _autocontrast,
  "equalize": _equalize,
  "posterize": _posterize,
  "rotate": _rotate,
  "solarize": _solarize,
  "shear_x": _shear("x"),
  "shear_y": _shear("y"),
  "translate_x": _translate("x"),
  "translate_y": _translate("y"),
}
_SIGNED = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _stateless_beta(seed, alpha, shape=()):
  """Beta(alpha, alpha) draws as G1 / (G1 + G2) of two stateless Gamma(alpha) draws."""
  g = tf.random.stateless_gamma([2, *shape], seed, alpha=alpha)
  return g[0] / (g[0] + g[1])


@register("augmix")
def augmix(severity: int = 3, width: int = 3, depth: int = -1, alpha: float = 1.0, ops=None):
  """AugMix (Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness
  and Uncertainty", ICLR 2020): `(1 - m) x + m sum_i w_i chain_i(x)`.

  Each of `width` chains applies `depth` ops (or 1 to 3, drawn per chain, when `depth` is -1)
  drawn uniformly from `ops` (default `AUGMIX_OPS`), each at a level drawn from
  `U(0.1, severity)`; rotation, shear and translation get a random sign. Mixing weights
  `w ~ Dirichlet(alpha, ..., alpha)`, skip weight `m ~ Beta(alpha, alpha)`. Levels as the
  reference code: rotate `int(3 level)` degrees, shear `0.03 level`, translate
  `int(level * size / 30)` pixels, posterize to `4 - int(0.4 level)` bits, solarize above
  `256 - int(25.6 level)`; geometric ops are bilinear and fill with gray (128).

  Works on `[H, W, C]` images in [0, 255] (floats are clipped and rounded: the ops act on
  uint8 pixels); returns float32 in [0, 255]. Normalising after the op equals the reference's
  mix of normalised images (the weights sum to 1). Stateless: every draw comes from `_rng`.
  `ops` may also name `"identity"` (a chain that keeps the image).
  """
  ops = tuple(AUGMIX_OPS if ops is None else ([ops] if isinstance(ops, str) else ops))
  unknown = [o for o in ops if o not in _AUGMIX_FNS]
  if unknown or not ops:
    raise ValueError(
      f"augmix ops {list(ops)}: unknown {unknown or 'none given'}; choose from "
      f"{sorted(_AUGMIX_FNS)}, e.g. augmix(ops=['rotate', 'equalize'])."
    )
  if not isinstance(severity, (int, float)) or not 1 <= severity <= 10:
    raise ValueError(f"augmix severity must be in [1, 10], got {severity!r}: AugMix uses 3.")
  if not isinstance(width, int) or width < 1:
    raise ValueError(f"augmix width must be an int >= 1 chains, got {width!r}: AugMix uses 3.")
  if not isinstance(depth, int) or not (depth == -1 or depth >= 1):
    raise ValueError(
      f"augmix depth must be -1 (1 to 3 ops per chain, drawn) or an int >= 1, got {depth!r}."
    )
  if not alpha > 0:
    raise ValueError(f"augmix alpha must be > 0, got {alpha!r}: AugMix uses 1.")
  max_depth = 3 if depth == -1 else depth
  fns = [_AUGMIX_FNS[o] for o in ops]
  signed = tf.constant([o in _SIGNED for o in ops])

  def apply_op(img, seed):
    pick, lvl, sign = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    index = tf.random.stateless_uniform([], pick, maxval=len(fns), dtype=tf.int32)
    level = tf.random.stateless_uniform([], lvl, minval=0.1, maxval=float(severity))
    negate = tf.logical_and(tf.gather(signed, index), tf.random.stateless_uniform([], sign) < 0.5)
    level = tf.where(negate, -level, level)
    branches = [lambda f=f: tf.ensure_shape(f(img, level), img.shape) for f in fns]
    return branches[0]() if len(fns) == 1 else tf.switch_case(index, branches)

  def fn(ex):
    ex, seed = _take_rng(ex, "augmix")
    image = ex["image"]
    x = image if image.dtype == tf.uint8 else tf.saturate_cast(tf.round(image), tf.uint8)
    mix_seed, weight_seed, depth_seed, chain_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4)
    )
    m = _stateless_beta(mix_seed, alpha)
    g = tf.random.stateless_gamma([width], weight_seed, alpha=alpha)
    weights = g / tf.reduce_sum(g)
    if depth == -1:
      depths = tf.random.stateless_uniform([width], depth_seed, minval=1, maxval=4, dtype=tf.int32)
    else:
      depths = tf.fill([width], depth)
    step_seeds = tf.random.experimental.stateless_split(chain_seed, width * max_depth)
    mix = tf.zeros(tf.shape(x), tf.float32)
    for i in range(width):
      chain = x
      for j in range(max_depth):
        step = step_seeds[i * max_depth + j]
        chain = tf.cond(j < depths[i], lambda c=chain, s=step: apply_op(c, s), lambda c=chain: c)
      mix += weights[i] * tf.cast(chain, tf.float32)
    out = (1.0 - m) * tf.cast(x, tf.float32) + m * mix
    return _with_image(ex, tf.ensure_shape(out, image.shape))

  return fn


@register("random_erasing")
def random_erasing(
  probability: float = 0.5,
  area=(0.02, 1 / 3),
  aspect=(0.3, 3.3),
  mode: str = "const",
  value: float = 0.0,
  mean: float = 127.5,
  std: float = 64.0,
  attempts: int = 10,
):
  """Random Erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020; timm's
  `RandomErasing`): with `probability`, one rectangle is replaced by a fill.

  Its area is a fraction `U(area)` of the image, its aspect ratio `h / w` log-uniform in
  `aspect`; of `attempts` draws the first that fits is used (none fits: the image is kept),
  placed uniformly. Fill (in the image's value range; timm fills normalised images, where
  N(0, 1) corresponds to `mean`, `std` in raw pixels): `mode="const"`: `value`; `"rand"`:
  one `N(mean, std)` draw per channel; `"pixel"`: one per pixel and channel. Keeps the
  image's dtype (integer images are rounded and clipped). Stateless: draws from `_rng`.
  """
  if not 0 <= probability <= 1:
    raise ValueError(f"random_erasing probability must be in [0, 1], got {probability!r}.")
  area, aspect = tuple(area), tuple(aspect)
  if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
    raise ValueError(
      f"random_erasing area must be (min, max) fractions with 0 < min <= max <= 1, got "
      f"{area!r}: e.g. (0.02, 1 / 3)."
    )
  if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
    raise ValueError(
      f"random_erasing aspect must be (min, max) ratios with 0 < min <= max, got {aspect!r}: "
      "e.g. (0.3, 3.3)."
    )
  if mode not in ("const", "rand", "pixel"):
    raise ValueError(f"random_erasing mode must be 'const', 'rand' or 'pixel', got {mode!r}.")
  if not isinstance(attempts, int) or attempts < 1:
    raise ValueError(f"random_erasing attempts must be an int >= 1, got {attempts!r}.")
  log_aspect = (math.log(aspect[0]), math.log(aspect[1]))

  def fn(ex):
    ex, seed = _take_rng(ex, "random_erasing")
    image = ex["image"]
    apply_seed, area_seed, aspect_seed, top_seed, left_seed, fill_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 6)
    )
    shape = tf.shape(image)
    h_img, w_img = shape[0], shape[1]
    target = tf.random.stateless_uniform([attempts], area_seed, *area) * tf.cast(
      h_img * w_img, tf.float32
    )
    ratio = tf.exp(tf.random.stateless_uniform([attempts], aspect_seed, *log_aspect))
    hs = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
    ws = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
    fits = (hs < h_img) & (ws < w_img) & (hs > 0) & (ws > 0)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    apply = tf.reduce_any(fits) & (tf.random.stateless_uniform([], apply_seed) < probability)
    h, w = hs[first], ws[first]
    # timm: top in [0, H - h], left in [0, W - w], both inclusive.
    # (maxval >= 1 also when nothing fits; the image is then kept.)
    top = tf.random.stateless_uniform(
      [], top_seed, maxval=tf.maximum(h_img - h + 1, 1), dtype=tf.int32
    )
    left = tf.random.stateless_uniform(
      [], left_seed, maxval=tf.maximum(w_img - w + 1, 1), dtype=tf.int32
    )
    rows = tf.range(h_img)[:, None, None]
    cols = tf.range(w_img)[None, :, None]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w) & apply
    if mode == "const":
      fill = tf.fill(shape, tf.cast(value, tf.float32))
    else:
      noise_shape = tf.concat([[1, 1], shape[2:]], 0) if mode == "rand" else shape
      fill = mean + std * tf.random.stateless_normal(noise_shape, fill_seed)
      fill = tf.broadcast_to(fill, shape)
    if image.dtype.is_integer:
      fill = tf.saturate_cast(tf.round(fill), image.dtype)
    else:
      fill = tf.cast(fill, image.dtype)
    return _with_image(ex, tf.where(inside, fill, image))

  return fn


# ----------------------------------------------------------------- batch ops


def _seed_stream(seed: tf.Tensor):
  """A Keras SeedGenerator that replays a stateless seed stream.

  Keras layers draw seeds with `next()`; returning fold_in(seed, i) for the
  i-th draw (i counted at trace time) makes them stateless and distinct.
  """
  import keras

  class _Stream(keras.random.SeedGenerator):
    def __init__(self):  # no super().__init__: no state variable wanted
      self._count = 0

    def next(self, ordered=True):
      self._count += 1
      return tf.random.experimental.stateless_fold_in(seed, self._count)

  return _Stream()


def _keras_batch_op(layer, name: str) -> Fn:
  def fn(batch):
    if batch["label"].shape.rank != 2:
      raise ValueError(
        f"{name} needs one-hot labels [batch, classes]: put onehot(num_classes) before it."
      )
    batch, seed = _take_rng(batch, name)
    images = tf.cast(batch["image"], tf.float32)
    labels = tf.cast(batch["label"], tf.float32)
    layer.backend.set_backend("tensorflow")  # as Keras does inside tf.data
    try:
      t = layer.get_random_transformation(
        {"images": images, "labels": labels}, training=True, seed=_seed_stream(seed)
      )
      images = layer.transform_images(images, t)
      labels = layer.transform_labels(labels, t)
    finally:
      layer.backend.reset()
    return {**batch, "image": images, "label": labels}

  return fn


@register("mixup", batched=True)
def mixup(alpha: float = 0.2):
  """keras.layers.MixUp on a batch (float32 out); stateless via `_rng`."""
  import keras

  return _keras_batch_op(keras.layers.MixUp(alpha=alpha), "mixup")


@register("cutmix", batched=True)
def cutmix(alpha: float = 1.0):
  """keras.layers.CutMix(factor=alpha) on a batch (float32 out); stateless."""
  import keras

  return _keras_batch_op(keras.layers.CutMix(factor=alpha), "cutmix")


# ----------------------------------------------------------------- multi-view (SSL) ops


@register("views")
def views(num_views: int = 2, ops=()):
  """Stacks `num_views` independently augmented copies of the image: `[V, H, W, C]`.

  `ops` is an op string or a list of op strings (no "|" inside the outer string), e.g.
  `views(2, ['inception_crop(224)', 'flip_lr'])`; each view draws its own seeds from
  `_rng`. The views must have one shape (end with a fixed-size crop or resize). Put
  `flatten_views` last so the batch becomes `[B * V, ...]` with the views of one image
  in consecutive rows (URL `--ssl`: rows (2k, 2k+1) are a positive pair).
  """
  if not isinstance(num_views, int) or num_views < 1:
    raise ValueError(f"views needs num_views >= 1, got {num_views!r}")
  spec = ops if isinstance(ops, str) else "|".join(ops)
  inner = parse_ops(spec)
  if inner.batch_ops:
    raise ValueError(f"views({num_views}, {ops!r}): only per-example ops can be applied per view.")

  def fn(ex):
    ex, seed = _take_rng(ex, "views")
    seeds = tf.random.experimental.stateless_split(seed, num_views)
    images = [inner.example_fn({**ex, "_rng": seeds[i]})["image"] for i in range(num_views)]
    images = [tf.cast(im, tf.float32) for im in images]
    return _with_image(ex, tf.stack(images, 0))

  return fn


@register("flatten_views", batched=True)
def flatten_views():
  """`[B, V, H, W, C]` views (from `views`) -> `[B * V, H, W, C]`; labels repeated V times,
  so the V views of example i are rows `[i*V, (i+1)*V)`.
  """

  def fn(batch):
    images = batch["image"]
    if images.shape.rank != 5:
      raise ValueError(
        "flatten_views needs stacked views [batch, views, H, W, C]: put views(2, [...]) before it."
      )
    v = images.shape[1]
    flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))
    flat.set_shape(
      [None if images.shape[0] is None else images.shape[0] * v] + images.shape[2:].as_list()
    )
    return {**batch, "image": flat, "label": tf.repeat(batch["label"], v, axis=0)}

  return fn
