r"""Verb `plan`: what a training run will cost, before it runs.

    python -m keras_unc plan --gin_file=experiments/big_vision/vit_s16_i1k.gin \\
        --accelerator=tpu_v3 --chips=4 [--mfu=0.4] [--json=plan.json]

Parses the gin config exactly as `train` does and builds the configured network and
optimizer (no data is read, no checkpoint or pretrained weight is loaded, nothing is
trained), then prints its parameters, FLOPs per example and per training step, the
optimizer state's size, an activation-memory estimate per replica at the configured batch
and `set_precision.policy`, and the wall time of `train.total_steps` on `--chips` chips of
`--accelerator` at model FLOP utilisation `--mfu`. The last line on stdout is the same
numbers as one JSON object (also written to `--json`). Conventions
(`keras_unc.training.cost`): FLOPs from the TF profiler (a multiply-add is 2); a training
step is 3 x the training-mode forward x the global batch; the activation memory is the sum
of the leaf-layer outputs of the training forward (an estimate).

Only the source's metadata is read (TFDS: the builder's info, which needs no prepared
data). A dataset with no metadata here (e.g. `tfds:imagenet21k`, which TFDS does not ship)
needs `--num_classes` (images are then planned at the network's input size).
"""

import json

from absl import flags

from keras_unc.cli import flags as common

FLAGS = flags.FLAGS
# Bindings that read weight files while the network is built: plan counts shapes, so it
# builds without them (selector -> parameter -> the value used instead).
NO_WEIGHT_FILES = {"cat_backbone": {"checkpoints": None}}
# Initialisers that read checkpoints (two-stage heads); plan initialises with zeros.
WEIGHT_FILE_INITIALISERS = ("member_head_kernel", "member_head_bias")


def define_flags():
  from keras_unc.training.cost import ACCELERATORS

  common.define_gin_flags("set_precision.policy='mixed_bfloat16'")
  flags.DEFINE_enum(
    "accelerator",
    "tpu_v4",
    list(ACCELERATORS),
    "Accelerator of the wall-time estimate; peaks are dense bf16 per chip "
    "(tpu_v4 275, tpu_v3 123, h100 989, a100 312 TFLOP/s).",
  )
  flags.DEFINE_integer("chips", 1, "Chips (TPU) or GPUs the run uses.", lower_bound=1)
  flags.DEFINE_float("mfu", 0.4, "Model FLOP utilisation assumed (fraction of the peak).")
  flags.DEFINE_string("json", None, "Also write the JSON to this path.")
  flags.DEFINE_integer(
    "num_classes",
    None,
    "Classes of the training data, for a dataset whose metadata is not readable here.",
  )


def main(argv):
  common.start(argv)
  try:
    found = plan(FLAGS.accelerator, FLAGS.chips, FLAGS.mfu, num_classes=FLAGS.num_classes)
  except PlanError as e:
    common.fail(str(e))
  print(found.pop("table"), flush=True)
  text = json.dumps(found)
  if FLAGS.json:
    from keras_unc.runtime import files

    files.write_json(FLAGS.json, found)
  print(text, flush=True)


class PlanError(ValueError):
  """The config cannot be planned; the message names what to fix."""


def _without_weight_files():
  """Rebinds (every scope of) the bindings that would read weight files while building."""
  import gin

  with gin.unlock_config():
    for (scope, selector), params in list(gin.config._CONFIG.items()):
      name = selector.split(".")[-1]
      prefix = f"{scope}/" if scope else ""
      for param, value in list(params.items()):
        if param in NO_WEIGHT_FILES.get(name, {}):
          gin.bind_parameter(f"{prefix}{selector}.{param}", NO_WEIGHT_FILES[name][param])
        elif (
          isinstance(value, gin.config.ConfigurableReference)
          and value.configurable.name in WEIGHT_FILE_INITIALISERS
        ):
          gin.bind_parameter(f"{prefix}{selector}.{param}", "zeros")


def _required(name):
  from keras_unc import config

  try:
    return config.value(name)
  except ValueError as e:
    raise PlanError(
      f"{name} is not set ({e}): plan needs a complete training config. A shared part "
      "(included by the recipes, e.g. experiments/ub_imagenet/imagenet.gin) is planned "
      "through a recipe that includes it."
    ) from e


def _metadata(dataset, num_classes, image_size, num_channels):
  """`(num_classes, image_shape)` of `dataset` from its metadata only."""
  from keras_unc.data import get_source

  fallback = (image_size, image_size, num_channels)
  if num_classes is not None:
    return num_classes, fallback
  try:
    source = get_source(dataset)
  except Exception as e:  # noqa: BLE001 -- TFDS raises its own types; all mean "no metadata".
    raise PlanError(
      f"No metadata for train.dataset={dataset!r} here ({type(e).__name__}: "
      f"{str(e).splitlines()[0]}). Give its number of classes with --num_classes=N "
      "(the images are then planned at the network's input size)."
    ) from e
  if getattr(source, "manifest", None) is not None:
    raise PlanError(
      f"train.dataset={dataset!r} is a feature cache: its run trains the head alone on "
      "cached embeddings. Plan the config that built the cache (its full network)."
    )
  shape = tuple(source.image_shape)
  # Variable-size images reach the network cropped to its input size (the preprocessing).
  shape = tuple(f if d is None else int(d) for d, f in zip(shape, fallback))
  return int(source.num_classes), shape


def plan(accelerator="tpu_v4", chips=1, mfu=0.4, num_classes=None):
  """The cost of the parsed gin config's training run (see `keras_unc.training.cost`).

  Builds the network and optimizer as `train` would (same gin bindings, precision and
  batch checks), without data, weights or training. Returns the `cost.estimate` dict plus
  `dataset`, `method`, `num_classes`, `policy`, `notes` and the printed `table`.
  """
  import keras

  from keras_unc import config
  from keras_unc.runtime import distribute
  from keras_unc.training import cost, optim, restore
  from keras_unc.training.network import build_network
  from keras_unc.transfer.distill import Distill

  try:
    cost.check_target(accelerator, chips, mfu)
  except ValueError as e:
    raise PlanError(str(e)) from e
  _without_weight_files()  # Before the method is built: its head initialiser may read files.
  dataset = _required("train.dataset")
  total_steps = _required("train.total_steps")
  batch_size = config.value("train.batch_size")
  network_args = config.query("train.network") or {}
  image_size = network_args.get("image_size") or _required("build_network.image_size")
  channels = network_args.get("num_channels") or config.value("build_network.num_channels")
  size = image_size if isinstance(image_size, int) else max(image_size)
  classes, shape = _metadata(dataset, num_classes, size, channels)
  method = restore.configured_method()
  optimizer_args = config.query("train.optimizer") or {}
  accumulation = int(
    optimizer_args.get("gradient_accumulation_steps")
    or config.value("make_optimizer.gradient_accumulation_steps")
  )
  replicas = chips * cost.ACCELERATORS[accelerator].replicas_per_chip
  try:
    split = optim.batch_plan(
      batch_size,
      replicas,
      batch_multiple=method.batch_multiple,
      method_name=method.name,
      accumulation_steps=accumulation,
      recipe_global_batch=config.value("train.recipe_global_batch"),
      recipe_lr_scaling=config.value("train.recipe_lr_scaling"),
      allow_recipe_change=config.value("train.allow_recipe_change"),
      distributed=replicas > 1,
    )
  except ValueError as e:
    raise PlanError(f"{e} (planned on {replicas} replicas: --chips={chips} {accelerator}).") from e
  previous = keras.config.dtype_policy()
  try:
    policy = distribute.set_precision()
    network = build_network(method, classes, shape, **network_args)
    optimizer = optim.make_optimizer(total_steps, **optimizer_args)
    found = cost.estimate(
      network,
      optimizer,
      shape,
      batch_size=batch_size,
      total_steps=total_steps,
      accelerator=accelerator,
      chips=chips,
      mfu=mfu,
      per_replica_batch=split["per_replica"],
    )
  finally:
    keras.config.set_dtype_policy(previous)
    keras.backend.clear_session()
  notes = []
  if isinstance(method, Distill):
    notes.append(
      "The distillation teacher runs a forward pass in every step; it is not counted "
      "(plan its own config for its FLOPs)."
    )
  found.update(
    dataset=dataset,
    method=method.name,
    num_classes=classes,
    policy=policy,
    notes=notes,
  )
  found["table"] = "\n".join(
    [f"plan: {method.name} on {dataset} ({classes} classes), {policy}", cost.format_table(found)]
    + [f"NOTE: {n}" for n in notes]
  )
  return found
