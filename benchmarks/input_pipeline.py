"""Input-pipeline throughput: keras_unc's `make_dataset` vs a hand-written `tf.data` pipeline.

The ImageNet-style training string

  decode(3)|inception_crop(224)|flip_lr|randaugment(2, 10)|value_range(-1, 1)

runs on JPEG images this script writes itself (smooth colour fields with shapes and
texture, 300-500 px sides, PIL quality 90: about 40 KiB each, a third of ImageNet's
average, so decoding is if anything cheaper than on ImageNet), stored as a TFDS dataset
and read the way ImageNet is read: `get_source("tfds:<name>", skip_decoding=True)`, so
`decode` gets the encoded bytes. Both pipelines read the same TFDS files. The
hand-written one is what a user writes without keras_unc: `as_dataset` ->
`shuffle` -> `repeat` -> `map(AUTOTUNE)` of `tf.io.decode_jpeg`, the stateful
`tf.image.sample_distorted_bounding_box` + `tf.image.resize`,
`tf.image.random_flip_left_right`, the same `keras.layers.RandAugment` and a scale ->
`batch` -> `prefetch(AUTOTUNE)`. keras_unc adds a deterministic, position-resumable order
and stateless per-example seeds.

Four stages, each timed for both pipelines, show where the time goes: decode alone (with
a central 224 crop so the images batch), + Inception crop + flip, + RandAugment,
+ value_range (the full string). Every measurement builds a fresh iterator, drops
`--warmup` batches (shuffle buffer fill, autotuning) and times batches for `--seconds`
(at least one, within the first epoch); the two pipelines alternate over `--rounds`
rounds (order swapped every round), and the median is reported, with the process's CPU
time per image (steadier than images/s on a shared machine). Before timing, the
seed-free string `decode(3)|central_crop(224)|value_range(-1, 1)` runs through both in
order and the outputs are compared element by element.

Two departures from big_vision's string: `decode(3)`, since a plain `decode` keeps the
stored channels, unknown while tracing, and Keras' RandAugment needs them; RandAugment's
magnitude 10, not 15, since keras_unc's `randaugment` maps magnitude 0..10 to Keras'
factor 0..1. The cost does not depend on the magnitude: Keras computes all eleven
operations for every image and selects.

  .venv/bin/python benchmarks/input_pipeline.py [--n 2048 --batch 64 --rounds 3] [--quick]

Last line: {"images_per_s": {"keras_unc": ..., "plain": ...}, "ratio": ..., "stages": {...}}
"""

import argparse
import gc
import io
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from keras_unc.data import get_source, make_dataset

DATASET = "keras_unc_synthetic_jpeg"
PIPELINES = ("plain", "keras_unc")


def stages(size: int, num_ops: int, magnitude: int) -> dict[str, str]:
  """Stage name -> op string; each stage adds to the one before (the first crops to batch)."""
  crop = f"decode(3)|inception_crop({size})|flip_lr"
  randaug = f"{crop}|randaugment({num_ops}, {magnitude})"
  return {
    "decode": f"decode(3)|central_crop({size})",
    "decode+crop+flip": crop,
    "+randaugment": randaug,
    "+value_range": f"{randaug}|value_range(-1, 1)",
  }


def _image(rng: np.random.Generator, height: int, width: int):
  """A smooth random colour field with a few shapes and pixel noise (a PIL image)."""
  from PIL import Image, ImageDraw

  grid = rng.integers(0, 256, size=(rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
  img = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
  draw = ImageDraw.Draw(img)
  for _ in range(rng.integers(2, 7)):
    x0, x1 = sorted(rng.integers(0, width, 2))
    y0, y1 = sorted(rng.integers(0, height, 2))
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
  pixels = np.asarray(img, np.float32) + rng.normal(0, 6, (height, width, 3))
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_jpeg_dataset(data_dir: str, n: int, min_side: int, max_side: int, seed: int = 0):
  """Writes `n` JPEGs (sides in [min_side, max_side]) as TFDS dataset `DATASET` in `data_dir`.

  One TFRecord shard of TFDS-serialised examples plus TFDS' metadata files, so
  `get_source("tfds:<DATASET>", data_dir)` opens it like a prepared TFDS dataset. Returns
  the mean JPEG size in KiB. Reuses a dataset already written there with `n` images.
  """
  import tensorflow_datasets as tfds

  folder = os.path.join(data_dir, DATASET, "1.0.0")
  if os.path.exists(folder):
    split = tfds.builder(DATASET, data_dir=data_dir).info.splits["train"]
    if split.num_examples != n:
      raise ValueError(
        f"{folder} holds {split.num_examples} images, not --n {n}: use another --data_dir."
      )
    return split.num_bytes / n / 1024
  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=1000),
    }
  )
  rng = np.random.default_rng(seed)
  tmp = folder + ".tmp"
  os.makedirs(tmp, exist_ok=True)
  num_bytes = 0
  with tf.io.TFRecordWriter(os.path.join(tmp, f"{DATASET}-train.tfrecord-00000-of-00001")) as w:
    for _ in range(n):
      height, width = (int(s) for s in rng.integers(min_side, max_side + 1, 2))
      buf = io.BytesIO()
      _image(rng, height, width).save(buf, format="JPEG", quality=90)
      num_bytes += buf.tell()
      label = int(rng.integers(0, 1000))
      w.write(features.serialize_example({"image": buf.getvalue(), "label": label}))
  tfds.folder_dataset.write_metadata(
    data_dir=tmp,
    features=features,
    split_infos=[tfds.core.SplitInfo(name="train", shard_lengths=[n], num_bytes=num_bytes)],
    check_data=False,
  )
  os.replace(tmp, folder)
  return num_bytes / n / 1024


def keras_unc_pipeline(source, spec: str, batch: int, shuffle_buffer: int, train: bool = True):
  return make_dataset(
    source, "train", spec, batch, train=train, seed=0, shuffle_buffer=shuffle_buffer
  )


def plain_pipeline(
  builder, spec: str, batch: int, shuffle_buffer: int, train: bool = True
) -> tf.data.Dataset:
  """The same op string written directly with `tf.image` (the stages of `stages` only)."""
  import tensorflow_datasets as tfds

  ops = spec.split("|")
  size = int(ops[1].split("(")[1].rstrip(")"))
  randaug = None
  if len(ops) > 3:
    num_ops, magnitude = (int(a) for a in ops[3].split("(")[1].rstrip(")").split(","))
    randaug = keras.layers.RandAugment(value_range=(0, 255), num_ops=num_ops, factor=magnitude / 10)

  def preprocess(example):
    image = tf.io.decode_jpeg(example["image"], channels=3)
    if ops[1].startswith("central_crop"):
      image = tf.image.resize_with_crop_or_pad(image, size, size)
    else:
      begin, crop, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        tf.zeros([0, 0, 4], tf.float32),
        area_range=(0.05, 1.0),
        min_object_covered=0,
        use_image_if_no_bounding_boxes=True,
      )
      image = tf.slice(image, begin, crop)
      image.set_shape([None, None, 3])  # Keras' RandAugment needs the channels.
      image = tf.image.resize(image, (size, size))
      image = tf.image.random_flip_left_right(image)
    if randaug is not None:
      image = randaug(image)
    if ops[-1].startswith("value_range"):
      image = tf.cast(image, tf.float32) / 255.0 * 2.0 - 1.0
    return image, example["label"]

  ds = builder.as_dataset(
    split="train", shuffle_files=train, decoders={"image": tfds.decode.SkipDecoding()}
  )
  if train:
    ds = ds.shuffle(shuffle_buffer).repeat()
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch, drop_remainder=train).prefetch(tf.data.AUTOTUNE)


def images_per_second(
  ds: tf.data.Dataset, batch: int, warmup: int, max_steps: int, seconds: float
) -> tuple[float, float, dict]:
  """(images/s, CPU ms per image, the first batch's `describe`) from a fresh iterator:
  after `warmup` untimed batches, times batches until `seconds` have passed (at least
  one batch, at most `max_steps`).

  The CPU time is the whole process's (every tf.data thread): on a shared machine it
  varies far less than the wall time, which depends on what else runs.
  """
  it = iter(ds)
  first = describe(next(it)[0])
  for _ in range(warmup - 1):
    next(it)
  start, cpu_start = time.perf_counter(), time.process_time()
  steps = 0
  while steps < 1 or (steps < max_steps and time.perf_counter() - start < seconds):
    next(it)
    steps += 1
  elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  del it
  gc.collect()  # Stops the iterator's background threads before the next measurement.
  return steps * batch / elapsed, 1e3 * cpu / (steps * batch), first


def describe(images: tf.Tensor) -> dict:
  """dtype, shape and value range of a batch of images."""
  images = images.numpy()
  return {
    "dtype": images.dtype.name,
    "shape": list(images.shape),
    "min": float(images.min()),
    "max": float(images.max()),
  }


def same_outputs(source, builder, size: int, batch: int, batches: int = 2) -> dict:
  """Both pipelines on the seed-free `decode|central_crop|value_range`, in order."""
  spec = f"decode(3)|central_crop({size})|value_range(-1, 1)"
  ours = keras_unc_pipeline(source, spec, batch, 1, train=False).take(batches)
  plain = plain_pipeline(builder, spec, batch, 1, train=False).take(batches)
  diffs = [
    float(np.max(np.abs(a[0].numpy() - b[0].numpy()))) if a[0].shape == b[0].shape else np.inf
    for a, b in zip(ours, plain)
  ]
  return {"spec": spec, "max_abs_diff": max(diffs), "equal": max(diffs) == 0.0}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=2048, help="JPEG images written")
  parser.add_argument("--min_side", type=int, default=300)
  parser.add_argument("--max_side", type=int, default=500)
  parser.add_argument("--size", type=int, default=224, help="crop size")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument(
    "--warmup", type=int, default=1, help="untimed batches per measurement (>= 1)"
  )
  parser.add_argument(
    "--seconds", type=float, default=8.0, help="timed seconds per measurement (>= 1 batch)"
  )
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
  parser.add_argument("--shuffle_buffer", type=int, default=1024, help="for both pipelines")
  parser.add_argument("--randaugment", type=int, nargs=2, default=(2, 10), metavar=("OPS", "M"))
  parser.add_argument("--data_dir", default=None, help="reuse a written dataset (default: tmp)")
  parser.add_argument("--stages", nargs="*", default=None, help="stage names to time (default all)")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny smoke run: 16 images of 40-64 px, 32 px crops, batch 4, one round, no "
    "'+randaugment' stage (the full string still runs RandAugment)",
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.n, args.min_side, args.max_side, args.size = 16, 40, 64, 32
    args.batch, args.warmup, args.seconds, args.rounds, args.shuffle_buffer = 4, 1, 0.0, 1, 8
    args.stages = args.stages or ["decode", "decode+crop+flip", "+value_range"]  # Traces less.
  # Timing stays inside the first epoch: the per-epoch reshuffle of a small data set would
  # otherwise weigh far more than on ImageNet (buffer / epoch: 1/2 here, 1/25 there).
  max_steps = args.n // args.batch - args.warmup
  if max_steps < 1 or args.warmup < 1:
    parser.error(
      f"--n {args.n} must hold --warmup {args.warmup} (>= 1) + 1 batches of {args.batch}."
    )
  import tensorflow_datasets as tfds

  data_dir = args.data_dir or tempfile.mkdtemp(prefix="input_pipeline_bench_")
  t0 = time.perf_counter()
  jpeg_kib = write_jpeg_dataset(data_dir, args.n, args.min_side, args.max_side)
  print(f"{args.n} JPEGs ({jpeg_kib:.1f} KiB mean) in {time.perf_counter() - t0:.1f} s", flush=True)
  source = get_source(f"tfds:{DATASET}", data_dir=data_dir, skip_decoding=True)
  builder = tfds.builder(DATASET, data_dir=data_dir)

  check = same_outputs(source, builder, args.size, args.batch)
  print(f"seed-free {check['spec']!r}: max |keras_unc - plain| = {check['max_abs_diff']}")

  specs = stages(args.size, *args.randaugment)
  if args.stages:
    unknown = sorted(set(args.stages) - set(specs))
    if unknown:
      parser.error(f"--stages {unknown}: unknown; choose from {list(specs)}.")
    specs = {k: v for k, v in specs.items() if k in args.stages}
  timings = {stage: {p: [] for p in PIPELINES} for stage in specs}  # (img/s, CPU ms/img)
  outputs = {}
  for stage, spec in specs.items():
    datasets = {
      "plain": plain_pipeline(builder, spec, args.batch, args.shuffle_buffer),
      "keras_unc": keras_unc_pipeline(source, spec, args.batch, args.shuffle_buffer),
    }
    outputs[stage] = {}
    for r in range(args.rounds):
      for p in PIPELINES if r % 2 == 0 else PIPELINES[::-1]:
        *m, first = images_per_second(datasets[p], args.batch, args.warmup, max_steps, args.seconds)
        timings[stage][p].append(m)
        outputs[stage].setdefault(p, first)
      print(
        f"{stage} round {r + 1}: "
        + ", ".join(
          f"{p} {timings[stage][p][-1][0]:.1f} img/s {timings[stage][p][-1][1]:.2f} CPU ms/img"
          for p in PIPELINES
        ),
        flush=True,
      )
  ips = {
    s: {p: statistics.median(v[0] for v in t[p]) for p in PIPELINES} for s, t in timings.items()
  }
  cpu = {
    s: {p: statistics.median(v[1] for v in t[p]) for p in PIPELINES} for s, t in timings.items()
  }

  print(
    f"\n{os.cpu_count()} CPU cores, batch {args.batch}, {args.n} JPEGs "
    f"{args.min_side}-{args.max_side} px ({jpeg_kib:.0f} KiB mean); median of "
    f"{args.rounds} alternating rounds of >= {args.seconds:g} s after {args.warmup} warm-up "
    "batch(es). Ratios keras_unc / plain (CPU: plain / keras_unc; > 1 is keras_unc faster)."
  )
  print(
    f"{'stage':<18}{'images/s: plain':>16}{'keras_unc':>11}{'ratio':>7}"
    f"{'CPU ms/img: plain':>19}{'keras_unc':>11}{'ratio':>7}"
  )
  for stage in specs:
    i, c = ips[stage], cpu[stage]
    print(
      f"{stage:<18}{i['plain']:>16.1f}{i['keras_unc']:>11.1f}{i['keras_unc'] / i['plain']:>7.3f}"
      f"{c['plain']:>19.2f}{c['keras_unc']:>11.2f}{c['plain'] / c['keras_unc']:>7.3f}"
    )
  final = list(specs)[-1]
  print(f"full string: {specs[final]}")
  result = {
    "images_per_s": {p: round(ips[final][p], 2) for p in PIPELINES},
    "ratio": round(ips[final]["keras_unc"] / ips[final]["plain"], 4),
    "cpu_ms_per_image": {p: round(cpu[final][p], 3) for p in PIPELINES},
    "cpu_ratio": round(cpu[final]["plain"] / cpu[final]["keras_unc"], 4),
    "spec": specs[final],
    "stages": {
      s: {
        "images_per_s": {p: round(ips[s][p], 2) for p in PIPELINES},
        "ratio": round(ips[s]["keras_unc"] / ips[s]["plain"], 4),
        "cpu_ms_per_image": {p: round(cpu[s][p], 3) for p in PIPELINES},
        "cpu_ratio": round(cpu[s]["plain"] / cpu[s]["keras_unc"], 4),
        "rounds_images_per_s": {p: [round(v[0], 1) for v in timings[s][p]] for p in PIPELINES},
        "spec": specs[s],
      }
      for s in specs
    },
    "outputs": outputs,
    "same_outputs": check,
    "cpu_count": os.cpu_count(),
    "batch": args.batch,
    "n_images": args.n,
    "jpeg_kib": round(jpeg_kib, 1),
    "rounds": args.rounds,
    "quick": args.quick,
  }
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
