"""Distribution strategies and numeric precision, selected by name from gin.

`get_strategy("auto" | "one_device" | "mirrored" | "multi_worker" | "tpu")` returns a
`tf.distribute.Strategy`; `set_precision` sets the Keras dtype policy for the whole run.
In a multi-worker job only the chief writes the workdir (`worker_dir`) and reads
checkpoints; the other workers receive its restored state (`sync_from_chief`).
"""

import atexit
import json
import logging
import os
import shutil
import tempfile

import gin
import keras
import tensorflow as tf

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16")


def configure_cpu_devices(num_devices):
  """Splits the host CPU into `num_devices` logical devices (tests, benchmarks).

  Must run before TensorFlow initialises its devices, i.e. before the first op.
  """
  cpus = tf.config.list_physical_devices("CPU")
  current = tf.config.get_logical_device_configuration(cpus[0])
  if current and len(current) == num_devices:
    return
  tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices
  )


def _accelerators():
  return [d.name for d in tf.config.list_logical_devices("GPU")]


@gin.configurable
def get_strategy(name="auto", tpu=None, devices=None):
  """Returns the `tf.distribute.Strategy` called `name`.

  Args:
    name: one of `STRATEGIES`. `auto` picks TPU when `tpu` is given, MirroredStrategy
      on several GPUs, otherwise TensorFlow's default strategy (one device, no
      distribution wrappers: measurably faster than `one_device` on a CPU).
    tpu: TPU name or address for `TPUClusterResolver` (`"local"` on a Cloud TPU VM).
    devices: explicit device list for `mirrored` (default: all GPUs, else all logical
      CPUs, which is how tests run two replicas on one host).
  """
  if name not in STRATEGIES:
    raise ValueError(
      f"Unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)} "
      "(gin: get_strategy.name, flag: --strategy)."
    )
  if name == "auto":
    if tpu:
      name = "tpu"
    elif len(_accelerators()) > 1:
      name = "mirrored"
    else:
      return tf.distribute.get_strategy()
  if name == "one_device":
    gpus = _accelerators()
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
  if name == "mirrored":
    if devices is None:
      devices = _accelerators() or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(list(devices))
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ValueError(
        "strategy 'multi_worker' needs the TF_CONFIG environment variable "
        "(cluster spec and this worker's task); see launch/multi_worker.sh."
      )
    json.loads(os.environ["TF_CONFIG"])  # Fail here, clearly, on malformed JSON.
    return tf.distribute.MultiWorkerMirroredStrategy()
  return _tpu_strategy(tpu)


def _tpu_strategy(tpu):
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, OSError, tf.errors.OpError, RuntimeError) as e:  # OSError: name lookup.
    raise RuntimeError(
      f"No TPU found (tpu={tpu!r}): run on a Cloud TPU VM with --tpu=local, pass the TPU "
      f"name with --tpu=NAME, or choose another strategy (--strategy=auto). Cause: {e}"
    ) from e
  log.info("TPU devices: %s", tf.config.list_logical_devices("TPU"))
  return tf.distribute.TPUStrategy(resolver)


@gin.configurable
def set_precision(policy="float32"):
  """Sets the global Keras dtype policy (`mixed_bfloat16` on TPU, `mixed_float16` on GPU).

  Under the mixed policies the backbone computes in bfloat16/float16 and every variable is
  float32; the heads, the uncertainty modules and the output layers run in float32 (every
  output of the network is float32), the spectral-norm power iteration and the GP precision
  and variance are float32 (the GP factor is computed on the host in float64), and under `mixed_float16` the
  optimizer gets dynamic loss scaling (`training.optim.make_optimizer`), whose state is
  checkpointed. See docs/tpu.md ("Precision").

  Args:
    policy: one of `PRECISIONS`.

  Returns:
    The policy name.
  """
  if policy not in PRECISIONS:
    raise ValueError(f"Unknown precision policy {policy!r}: choose one of {', '.join(PRECISIONS)}.")
  keras.config.set_dtype_policy(policy)
  return policy


def is_chief(strategy):
  """Whether this process writes the run's outputs (always, except non-chief workers)."""
  return bool(strategy.extended.should_checkpoint)


def task(strategy):
  """`(task_type, task_id)` of this process in a multi-worker cluster, else `(None, 0)`."""
  resolver = getattr(strategy, "cluster_resolver", None)
  task_type = getattr(resolver, "task_type", None)
  if task_type is None or isinstance(strategy, tf.distribute.TPUStrategy):
    return None, 0
  return task_type, int(resolver.task_id or 0)


def worker_dir(workdir, strategy):
  """Where this process writes: `workdir` on the chief, a private scratch folder elsewhere.

  Every worker of a multi-worker job runs the same code (saving included: the variables
  are in sync), but two writers must never share checkpoints, summaries or metrics, so
  only the chief writes `workdir`; the others' copies go to a temporary folder, and they
  get the restored state from the chief (`sync_from_chief`), so they need not see
  `workdir` at all.
  """
  if is_chief(strategy):
    return workdir
  task_type, task_id = task(strategy)
  scratch = tempfile.mkdtemp(prefix=f"keras_unc-{task_type}{task_id}-")
  atexit.register(shutil.rmtree, scratch, ignore_errors=True)
  log.info(
    "Non-chief %s %d writes to %s (the chief writes %s).", task_type, task_id, scratch, workdir
  )
  return scratch


def sync_from_chief(strategy, variables, step):
  """Gives every worker the chief's values of `variables` and its `step` (after a restore).

  Only the chief reads checkpoints; one all-reduce in which the first replica (on the
  chief) contributes its values and every other replica zeros copies them exactly.
  A no-op outside multi-worker jobs. Returns the chief's step.
  """
  if task(strategy)[0] is None:
    return step
  variables = list(variables)

  def wide(x):  # Collectives reduce float32/64 and int64; bool, uint, half types widen.
    if x.dtype.is_integer or x.dtype.is_bool:
      return tf.cast(x, tf.int64)
    return x if x.dtype == tf.float64 else tf.cast(x, tf.float32)

  @tf.function
  def replica_fn():
    ctx = tf.distribute.get_replica_context()
    first = ctx.replica_id_in_sync_group == 0
    values = [wide(tf.constant(step, tf.int64))] + [
      wide(tf.convert_to_tensor(v)) for v in variables
    ]
    values = [tf.where(first, x, tf.zeros_like(x)) for x in values]
    out = list(values)
    for dtype in (tf.float32, tf.float64, tf.int64):  # One packed all-reduce per dtype.
      picked = [i for i, x in enumerate(values) if x.dtype == dtype]
      if picked:
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [values[i] for i in picked])
        for i, x in zip(picked, reduced):
          out[i] = x
    return out

  reduced = [strategy.experimental_local_results(x)[0] for x in strategy.run(replica_fn)]
  for var, value in zip(variables, reduced[1:]):
    var.assign(tf.cast(value, var.dtype))
  return int(reduced[0].numpy())
