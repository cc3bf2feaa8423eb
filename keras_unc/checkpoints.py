"""Atomic, keep-last-K training checkpoints with fallback past a corrupted newest one.

A checkpoint is a folder `ckpt-<step>` holding `variables.npz` (every model variable,
dropout seed states included, and every optimizer variable) and `meta.json`. It is
written under a temporary name and renamed into place, so a reader never sees half a
checkpoint even if the writer is killed. The data position is the step itself: the
input pipeline is a deterministic function of (seed, step).
"""

import json
import os
import re
import shutil
import time

import numpy as np
from absl import logging

_NAME = re.compile(r"^ckpt-(\d+)$")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model being built."""


class Checkpointer:
  """Saves and restores a model's and an optimizer's variables in `directory`.

  Args:
    directory: checkpoint folder, e.g. `WORKDIR/checkpoints`.
    keep: number of newest checkpoints to keep.
  """

  def __init__(self, directory, keep=3):
    self.directory = directory
    self.keep = keep
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):  # Leftovers of a writer that was killed.
      if ".tmp" in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)

  def steps(self):
    """Steps of the complete checkpoints, newest first."""
    found = [int(m.group(1)) for m in map(_NAME.match, os.listdir(self.directory)) if m]
    return sorted(found, reverse=True)

  def path(self, step):
    return os.path.join(self.directory, f"ckpt-{step:09d}")

  def save(self, step, model, optimizer, extra=None):
    """Writes checkpoint `step` atomically and prunes old ones. Returns its path."""
    final = self.path(step)
    tmp = f"{final}.tmp-{os.getpid()}"
    os.makedirs(tmp)
    arrays = {f"model/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer/{i:05d}": np.asarray(v.numpy())
                   for i, v in enumerate(optimizer.variables)})
    with open(os.path.join(tmp, "variables.npz"), "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    meta = {"step": int(step), "time": time.time(), "model": model.name,
            "variables": [[v.path, list(v.shape)] for v in model.variables],
            "optimizer_variables": len(optimizer.variables), **(extra or {})}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f)
      f.flush()
      os.fsync(f.fileno())
    if os.path.exists(final):  # Same step saved twice (e.g. resumed, then final save).
      shutil.rmtree(final)
    os.rename(tmp, final)
    for old in self.steps()[self.keep:]:
      shutil.rmtree(self.path(old), ignore_errors=True)
    return final

  def load_latest(self):
    """Returns `(step, arrays, meta)` of the newest readable checkpoint, or None.

    A checkpoint that cannot be read is skipped with a warning naming it, and the
    previous one is used; it is left on disk for inspection.
    """
    for step in self.steps():
      try:
        return (step, *read(self.path(step)))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %s is unreadable (%s: %s); falling back to the previous "
                        "checkpoint.", self.path(step), type(e).__name__, e)
        print(f"WARNING: checkpoint {self.path(step)} is unreadable ({type(e).__name__}: {e}); "
              "falling back to the previous checkpoint.", flush=True)
    return None


def read(path):
  """Reads one checkpoint folder into `(arrays dict, meta dict)`, fully (validates it)."""
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  with np.load(os.path.join(path, "variables.npz")) as z:
    arrays = {k: z[k] for k in z.files}
  return arrays, meta


def assign(variables, arrays, prefix, source):
  """Assigns `arrays[prefix/i]` to `variables[i]`, checking count and shapes."""
  values = [arrays[k] for k in sorted(k for k in arrays if k.startswith(prefix + "/"))]
  if len(values) != len(variables):
    raise CheckpointMismatchError(
        f"Checkpoint {source} has {len(values)} {prefix} variables but the model has "
        f"{len(variables)}: it was written by a different model or method. Use a fresh "
        "--workdir, or the matching gin config.")
  for var, value in zip(variables, values):
    if tuple(var.shape) != tuple(value.shape):
      raise CheckpointMismatchError(
          f"Checkpoint {source}: variable {var.path} has shape {tuple(value.shape)} in the "
          f"checkpoint but {tuple(var.shape)} in the model (different backbone, image size or "
          "number of classes?). Use a fresh --workdir, or the matching gin config.")
  for var, value in zip(variables, values):
    var.assign(value)


def restore(model, optimizer, arrays, source):
  """Restores model (and, when given, optimizer) variables from checkpoint arrays."""
  assign(model.variables, arrays, "model", source)
  if optimizer is not None:
    assign(optimizer.variables, arrays, "optimizer", source)
