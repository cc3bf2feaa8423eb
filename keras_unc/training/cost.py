"""What a training run will cost, before it runs: parameters, FLOPs, optimizer state,
activation memory and wall time on a named accelerator.

`forward_flops` is the one FLOP counter of the package: `python -m keras_unc plan` and
`benchmarks/methods.py` (its `flop_ratio` column) both count with it. It is the TensorFlow
profiler's `float_operation` count of the traced forward graph, which counts a
multiply-add as 2 FLOPs (a ResNet-50 at 224 px: 8.2 GFLOPs = 4.1 GMACs).

Example:
```python
network = build_network(method, num_classes=1000, input_shape=(224, 224, 3))
optimizer = optim.make_optimizer(total_steps)
found = cost.estimate(network, optimizer, (224, 224, 3), batch_size=1024,
                      total_steps=112_590, accelerator="tpu_v3", chips=4, mfu=0.4)
print(cost.format_table(found))
```
"""

import contextlib
import dataclasses
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

# Forward + backward FLOPs per forward FLOP: the backward pass costs about twice the forward
# (one product for the input gradient, one for the weight gradient; Kaplan et al. 2020).
TRAIN_FLOPS_PER_FORWARD = 3


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """One accelerator chip as `plan` models it.

  Args:
    name: what it is, for the table.
    peak_tflops: dense bfloat16 matmul peak of one chip, TFLOP/s (the vendor's figure).
    float32_tflops: the peak a float32 policy gets: a TPU's default matmul precision runs
      float32 as one bfloat16 pass (the same peak); a GPU runs it in TF32 (half).
    replicas_per_chip: `tf.distribute` replicas one chip holds (a TPU v3 chip has two
      TensorCores, each its own replica; a v4 chip is one megacore replica).
    memory_gib: accelerator memory of one replica, GiB.
  """

  name: str
  peak_tflops: float
  float32_tflops: float
  replicas_per_chip: int
  memory_gib: float


ACCELERATORS = {
  "tpu_v2": Accelerator("TPU v2 chip (2 TensorCores)", 45.0, 45.0, 2, 8.0),
  "tpu_v3": Accelerator("TPU v3 chip (2 TensorCores)", 123.0, 123.0, 2, 16.0),
  "tpu_v4": Accelerator("TPU v4 chip", 275.0, 275.0, 1, 32.0),
  "tpu_v5e": Accelerator("TPU v5e chip", 197.0, 197.0, 1, 16.0),
  "h100": Accelerator("NVIDIA H100 SXM", 989.0, 494.0, 1, 80.0),
  "a100": Accelerator("NVIDIA A100 80GB", 312.0, 156.0, 1, 80.0),
}


def trace_forward(network, input_shape, batch_size=1, training=False):
  """The graph of one forward pass of `network` on a float32 batch of `batch_size`
  images of `input_shape` (traced, never run: no memory is allocated for the batch).
  """
  fn = tf.function(lambda x: network(x, training=training))
  spec = tf.TensorSpec([batch_size, *input_shape], tf.float32)
  return fn.get_concrete_function(spec).graph


def count_float_ops(graph):
  """Float operations of `graph` (TF profiler, a multiply-add counts 2)."""
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel("ERROR")  # The v1 profiler's deprecation warnings say nothing here.
  try:
    return int(tf.compat.v1.profiler.profile(graph, options=opts).total_float_ops)
  finally:
    logger.setLevel(level)


def forward_flops(network, input_shape, batch_size=1, training=False):
  """Float operations of one forward pass (TF profiler on the traced graph).

  At the defaults, batch 1 in inference mode: the FLOPs per example that
  `benchmarks/methods.py` compares across methods. Members and Monte Carlo samples count
  as the network runs them (a BatchEnsemble's tiled batch, MC dropout's samples).
  """
  return count_float_ops(trace_forward(network, input_shape, batch_size, training))


def _leaf_layers(network):
  return [
    layer
    for layer in network._flatten_layers(include_self=False, recursive=True)
    if not list(layer._flatten_layers(include_self=False, recursive=False))
  ]


@contextlib.contextmanager
def _recording_outputs(network, found):
  """Appends `(layer name, bytes)` of every float output of every leaf layer (a layer
  without sublayers) that runs inside the context to `found`.
  """
  layers = _leaf_layers(network)
  for layer in layers:

    def call(*args, _call=layer.call, _name=layer.name, **kwargs):
      out = _call(*args, **kwargs)
      for t in tf.nest.flatten(out):
        if isinstance(t, tf.Tensor) and t.dtype.is_floating and t.shape.is_fully_defined():
          found.append((_name, t.shape.num_elements() * t.dtype.size))
      return out

    # An instance attribute shadows the class's `call` for this trace only (set past
    # Keras' attribute tracking, which would wrap it); removed below.
    object.__setattr__(layer, "call", call)
  try:
    yield found
  finally:
    for layer in layers:
      object.__delattr__(layer, "call")


def training_forward(network, input_shape, batch_size):
  """`(flops, activation_bytes)` of one training-mode forward pass at `batch_size`.

  `activation_bytes` is the estimate of the activation memory: the sum of the sizes of
  the outputs of every leaf layer the forward pass runs (the tensors a backward pass
  keeps), each at its own dtype (bfloat16 in a mixed-precision backbone, float32 in the
  heads). An estimate: elementwise intermediates inside a layer (GELU, normalisation
  arithmetic, a head's Monte Carlo samples) are not counted, nor XLA's fusion and
  rematerialisation, nor the allocator's slack.
  """
  found = []
  with _recording_outputs(network, found):
    graph = trace_forward(network, input_shape, batch_size, training=True)
  return count_float_ops(graph), int(sum(size for _, size in found))


def variable_bytes(variables):
  return int(sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def parameter_counts(network):
  """`{"total": ..., "trainable": ...}` parameters (every weight: BatchNorm statistics and
  a GP's precision matrix are parameters here, as in `keras.Model.count_params`).
  """
  return {
    "total": int(sum(math.prod(v.shape) for v in network.weights)),
    "trainable": int(sum(math.prod(v.shape) for v in network.trainable_weights)),
  }


def optimizer_state(optimizer, variables):
  """`{"variables": n, "bytes": b, "slots_per_parameter": s}` of `optimizer` once built on
  `variables` (builds it when not built): its slots (AdamW's 2 moments, SGD's momentum,
  accumulated gradients), step counters and loss-scale state.
  """
  if not optimizer.built:
    optimizer.build(variables)
  size = variable_bytes(optimizer.variables)
  weights = variable_bytes(variables)
  return {
    "variables": len(optimizer.variables),
    "bytes": size,
    "slots_per_parameter": round(size / weights, 3) if weights else 0.0,
  }


def peak_tflops(accelerator, compute_dtype):
  """Peak TFLOP/s of one chip of `accelerator` for matmuls in `compute_dtype`."""
  acc = ACCELERATORS[accelerator]
  return acc.float32_tflops if compute_dtype == "float32" else acc.peak_tflops


def wall_seconds(step_flops, total_steps, accelerator, chips, mfu, compute_dtype="bfloat16"):
  """Training time of `total_steps` steps of `step_flops` on `chips` chips of
  `accelerator` at model FLOP utilisation `mfu` (the fraction of the peak reached).
  """
  peak = peak_tflops(accelerator, compute_dtype)
  return step_flops * total_steps / (chips * peak * 1e12 * mfu)


def check_target(accelerator, chips, mfu):
  """Refuses an unknown accelerator, a chip count < 1 or a utilisation outside (0, 1]."""
  if accelerator not in ACCELERATORS:
    raise ValueError(
      f"Unknown accelerator {accelerator!r}: choose one of {', '.join(ACCELERATORS)}."
    )
  if chips < 1:
    raise ValueError(f"chips={chips} must be >= 1.")
  if not 0 < mfu <= 1:
    raise ValueError(f"mfu={mfu} must be in (0, 1]: the fraction of the peak FLOP/s reached.")


def estimate(
  network,
  optimizer,
  input_shape: Sequence[int],
  *,
  batch_size: int,
  total_steps: int,
  accelerator: str = "tpu_v4",
  chips: int = 1,
  mfu: float = 0.4,
  per_replica_batch: int | None = None,
):
  """The cost of training `network` with `optimizer` for `total_steps` steps of
  `batch_size` (global, per forward pass) images of `input_shape`.

  Args:
    network: the built network (`keras_unc.training.network.build_network`).
    optimizer: its optimizer (`keras_unc.training.optim.make_optimizer`); built here on the
      network's trainable variables when not built.
    input_shape: (H, W, C) of one input image.
    batch_size: global examples per forward pass (`train.batch_size`).
    total_steps: forward/backward passes of the run (`train.total_steps`).
    accelerator: a key of `ACCELERATORS`.
    chips: chips of the slice or GPUs.
    mfu: model FLOP utilisation assumed for the wall time.
    per_replica_batch: examples per replica (default `batch_size / replicas`).

  Returns:
    A JSON-serialisable dict: `params`, `trainable_params`, `param_bytes`,
    `forward_flops_per_example` (inference, batch 1: the benchmark's counter),
    `train_forward_flops_per_example`, `step_flops` (3 x the training forward at the
    global batch), `optimizer_state_bytes`, `activation_bytes_per_replica`,
    `memory_bytes_per_replica` (weights + gradients + optimizer state + activations),
    `wall_seconds` and the settings they assume.
  """
  check_target(accelerator, chips, mfu)
  acc = ACCELERATORS[accelerator]
  replicas = chips * acc.replicas_per_chip
  if per_replica_batch is None:
    if batch_size % replicas:
      raise ValueError(
        f"Global batch {batch_size} does not split over {replicas} replicas ({chips} "
        f"{accelerator} chip(s) x {acc.replicas_per_chip}): choose another chip count."
      )
    per_replica_batch = batch_size // replicas
  input_shape = tuple(int(d) for d in input_shape)
  params = parameter_counts(network)
  trainable = network.trainable_variables
  opt = optimizer_state(optimizer, trainable)
  forward = forward_flops(network, input_shape)
  train_flops, activations = training_forward(network, input_shape, per_replica_batch)
  step = TRAIN_FLOPS_PER_FORWARD * train_flops * replicas
  weights = variable_bytes(network.weights)
  dtype = keras.config.dtype_policy().compute_dtype
  memory = weights + variable_bytes(trainable) + opt["bytes"] + activations
  return {
    "params": params["total"],
    "trainable_params": params["trainable"],
    "param_bytes": weights,
    "forward_flops_per_example": forward,
    "train_forward_flops_per_example": train_flops / per_replica_batch,
    "step_flops": step,
    "optimizer": type(optimizer).__name__,
    "optimizer_state_bytes": opt["bytes"],
    "optimizer_slots_per_parameter": opt["slots_per_parameter"],
    "activation_bytes_per_replica": activations,
    "memory_bytes_per_replica": memory,
    "replica_memory_bytes": int(acc.memory_gib * 2**30),
    "compute_dtype": dtype,
    "input_shape": list(input_shape),
    "batch_size": batch_size,
    "per_replica_batch": per_replica_batch,
    "replicas": replicas,
    "total_steps": total_steps,
    "accelerator": accelerator,
    "chips": chips,
    "peak_tflops_per_chip": peak_tflops(accelerator, dtype),
    "mfu": mfu,
    "wall_seconds": wall_seconds(step, total_steps, accelerator, chips, mfu, dtype),
  }


def _count(n):
  for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f}"


def _bytes(n):
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f} B"


def format_duration(seconds):
  """`1 d 3 h 05 min`, `7 h 22 min`, `4 min 10 s` or `12.3 s`."""
  if seconds < 60:
    return f"{seconds:.1f} s"
  minutes = int(round(seconds / 60))
  if minutes < 60:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
  hours, minutes = divmod(minutes, 60)
  if hours < 24:
    return f"{hours} h {minutes:02d} min"
  days, hours = divmod(hours, 24)
  return f"{days} d {hours} h {minutes:02d} min"


def format_table(found):
  """The readable table of an `estimate` result (conventions stated in its rows)."""
  acc = ACCELERATORS[found["accelerator"]]
  rows = [
    ("parameters", f"{found['params']:,} ({found['trainable_params']:,} trainable)"),
    ("weights", f"{_bytes(found['param_bytes'])} (as stored)"),
    (
      "FLOPs / example (forward)",
      f"{_count(found['forward_flops_per_example'])}FLOP (inference, batch 1; multiply-add = 2)",
    ),
    (
      "FLOPs / example (train fwd)",
      f"{_count(found['train_forward_flops_per_example'])}FLOP (training mode, as the step runs)",
    ),
    (
      "FLOPs / training step",
      f"{_count(found['step_flops'])}FLOP (3 x train forward x global batch {found['batch_size']})",
    ),
    (
      "optimizer state",
      f"{_bytes(found['optimizer_state_bytes'])} ({found['optimizer']}, "
      f"{found['optimizer_slots_per_parameter']:g} x the trainable weights)",
    ),
    (
      "activations / replica",
      f"{_bytes(found['activation_bytes_per_replica'])} (estimate: leaf-layer outputs of "
      f"the training forward, batch {found['per_replica_batch']}, {found['compute_dtype']})",
    ),
    (
      "memory / replica",
      f"{_bytes(found['memory_bytes_per_replica'])} of {acc.memory_gib:g} GiB (weights + "
      "gradients + optimizer state + activations)",
    ),
    (
      "wall time",
      f"{format_duration(found['wall_seconds'])} for {found['total_steps']:,} steps on "
      f"{found['chips']} x {acc.name} ({found['replicas']} replicas) at "
      f"{found['mfu']:.0%} of {found['peak_tflops_per_chip']:g} TFLOP/s per chip "
      f"({found['compute_dtype']})",
    ),
  ]
  width = max(len(k) for k, _ in rows)
  rule = "=" * (width + 2 + max(len(v) for _, v in rows))
  lines = [rule, *(f"{k:<{width}}  {v}" for k, v in rows), rule]
  if found["memory_bytes_per_replica"] > found["replica_memory_bytes"]:
    lines.append(
      f"WARNING: the estimate ({_bytes(found['memory_bytes_per_replica'])}) exceeds one "
      f"replica's {acc.memory_gib:g} GiB: use more chips, a smaller train.batch_size with "
      "make_optimizer.gradient_accumulation_steps, or set_precision.policy="
      "'mixed_bfloat16'."
    )
  return "\n".join(lines)
