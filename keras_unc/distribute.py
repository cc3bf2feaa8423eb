"""Distribution strategies and numeric precision, selected by name from gin.

`get_strategy("auto" | "one_device" | "mirrored" | "multi_worker" | "tpu")` returns a
`tf.distribute.Strategy`; `set_precision` sets the Keras dtype policy for the whole run.
"""

import json
import os

import gin
import keras
import tensorflow as tf
from absl import logging

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
      cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)


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
    raise ValueError(f"Unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)} "
                     "(gin: get_strategy.name, flag: --strategy).")
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
      raise ValueError("strategy 'multi_worker' needs the TF_CONFIG environment variable "
                       "(cluster spec and this worker's task); see launch/multi_worker.sh.")
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
  logging.info("TPU devices: %s", tf.config.list_logical_devices("TPU"))
  return tf.distribute.TPUStrategy(resolver)


@gin.configurable
def set_precision(policy="float32"):
  """Sets the global Keras dtype policy (`mixed_bfloat16` on TPU, `mixed_float16` on GPU)."""
  if policy not in PRECISIONS:
    raise ValueError(f"Unknown precision policy {policy!r}: choose one of {', '.join(PRECISIONS)}.")
  keras.config.set_dtype_policy(policy)
  return policy
