"""Atomic, keep-last-K training checkpoints with fallback past a corrupted newest one.

A checkpoint is a folder `ckpt-<step>` holding `variables.npz` (every model variable,
dropout seed states included, and every optimizer variable) and `meta.json`. It is
written under a temporary name and renamed into place, so a reader never sees half a
checkpoint even if the writer is killed. The data position is the step itself: the
input pipeline is a deterministic function of (seed, step).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
from typing import Any

import numpy as np

from keras_unc.runtime import files

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d+)$")
_SAVE_DELAY = float(os.environ.get("KERAS_UNC_TEST_SAVE_DELAY", "0") or 0)  # Seconds.


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the model being built."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, permissions); older ones are intact."""


class Checkpointer:
  """Saves and restores a model's and an optimizer's variables in `directory`.

  Args:
    directory: checkpoint folder, e.g. `WORKDIR/checkpoints`.
    keep: number of newest checkpoints to keep.
  """

  def __init__(self, directory: str, keep: int = 3):
    self.directory = directory
    self.keep = keep
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):  # Leftovers of a writer that was killed.
      final = os.path.join(directory, name.split(".tmp")[0])
      if ".tmp-old-" in name and not os.path.exists(final):
        os.rename(os.path.join(directory, name), final)  # Killed while replacing it.
      elif ".tmp" in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints, newest first."""
    return _steps(self.directory)

  def path(self, step: int) -> str:
    return os.path.join(self.directory, f"ckpt-{step:09d}")

  def save(self, step: int, model: Any, optimizer: Any, extra: dict[str, Any] | None = None) -> str:
    """Writes checkpoint `step` atomically and prunes old ones. Returns its path.

    On a write failure (disk full, permissions) the temporary folder is removed, every
    existing checkpoint is left as it was, and `CheckpointWriteError` says where and why.
    """
    final = self.path(step)
    tmp = files.tmp_path(final)
    try:
      self._write(tmp, step, model, optimizer, extra)
      # The same step saved twice (resumed, then the final save) keeps a copy across a kill.
      files.replace_dir(tmp, final)
    except OSError as e:
      shutil.rmtree(tmp, ignore_errors=True)
      raise CheckpointWriteError(self._write_error(final, e)) from e
    for old in self.steps()[self.keep :]:
      # Renamed first: a kill during rmtree must not leave a half-deleted `ckpt-<step>`.
      doomed = f"{self.path(old)}.tmp-del-{os.getpid()}"
      try:
        os.rename(self.path(old), doomed)
      except OSError:
        continue
      shutil.rmtree(doomed, ignore_errors=True)
    return final

  def _write_error(self, final, e):
    why = {
      errno.ENOSPC: "the disk is full",
      errno.EDQUOT: "the disk quota is exceeded",
      errno.EACCES: "permission denied",
      errno.EPERM: "operation not permitted",
      errno.EROFS: "the file system is read-only",
    }.get(e.errno, "the write failed")
    fix = (
      "free disk space (or delete old workdirs, or lower train.keep_checkpoints)"
      if e.errno in (errno.ENOSPC, errno.EDQUOT)
      else f"make {self.directory} writable by this user"
      if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
      else "fix the file system"
    )
    kept = self.steps()
    previous = (
      f"the previous checkpoint {self.path(kept[0])} is intact"
      if kept
      else "no earlier checkpoint exists"
    )
    return (
      f"Could not write checkpoint {final}: {why} ({e}). Nothing was half-written and "
      f"{previous}. To continue: {fix}, or choose another --workdir, then rerun the "
      "same command to resume."
    )

  def _write(self, tmp, step, model, optimizer, extra):
    os.makedirs(tmp)
    arrays = {f"model/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays.update(
      {f"optimizer/{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    )
    with open(os.path.join(tmp, "variables.npz"), "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    if _SAVE_DELAY:  # Fault-injection tests: widen the window in which a kill lands mid-write.
      time.sleep(_SAVE_DELAY)
    meta = {
      "step": int(step),
      "time": time.time(),
      "model": model.name,
      "method": getattr(model, "method_name", None),
      "variables": [[v.path, list(v.shape)] for v in model.variables],
      "optimizer_variables": len(optimizer.variables),
      **(extra or {}),
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f)
      f.flush()
      os.fsync(f.fileno())

  def load_latest(self):
    """Returns `(step, arrays, meta)` of the newest readable checkpoint, or None.

    A checkpoint that cannot be read is skipped with a warning naming it, and the
    previous one is used; it is left on disk for inspection.
    """
    for step in self.steps():
      try:
        return (step, *read(self.path(step)))
      except Exception as e:
        log.warning(
          "checkpoint %s is unreadable (%s: %s); falling back to the previous checkpoint.",
          self.path(step),
          type(e).__name__,
          e,
        )
    return None


def _steps(directory):
  found = [int(m.group(1)) for m in map(_NAME.match, os.listdir(directory)) if m]
  return sorted(found, reverse=True)


def resolve(path):
  """The checkpoint folder `path` names (absolute): itself (it holds `meta.json`), or the
  newest complete checkpoint of a `checkpoints/` folder or of a training workdir.
  """
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, "meta.json")):
    return path
  for folder in (os.path.join(path, "checkpoints"), path):
    steps = _steps(folder) if os.path.isdir(folder) else []
    if steps:
      return os.path.join(folder, f"ckpt-{steps[0]:09d}")
  raise FileNotFoundError(
    f"No keras_unc checkpoint at {path!r}: give a checkpoint folder "
    "(with meta.json and variables.npz), a checkpoints/ folder or a "
    "training workdir (train it first)."
  )


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
      "--workdir, or the matching gin config."
    )
  for var, value in zip(variables, values):
    if tuple(var.shape) != tuple(value.shape):
      raise CheckpointMismatchError(
        f"Checkpoint {source}: variable {var.path} has shape {tuple(value.shape)} in the "
        f"checkpoint but {tuple(var.shape)} in the model (different backbone, image size or "
        "number of classes?). Use a fresh --workdir, or the matching gin config."
      )
  for var, value in zip(variables, values):
    var.assign(value)


def restore(model, optimizer, arrays, source):
  """Restores model (and, when given, optimizer) variables from checkpoint arrays."""
  assign(model.variables, arrays, "model", source)
  if optimizer is not None:
    assign(optimizer.variables, arrays, "optimizer", source)


def check_method(meta, method_name, source, adapt_allowed):
  """Refuses a checkpoint written by another method, naming both and the fix."""
  written = meta.get("method")
  if written and method_name and written != method_name:
    fix = (
      "set train.warm_start to it with train.adapt_checkpoint=True to copy the shared weights"
      if adapt_allowed
      else "use a fresh --workdir (and train.warm_start=<that "
      "checkpoint> with train.adapt_checkpoint=True to start from its weights)"
    )
    raise CheckpointMismatchError(
      f"Checkpoint {source} was written by method {written!r}, but this run builds method "
      f"{method_name!r}: {fix}."
    )


def weight_key(path):
  """What a weight is, independent of wrappers and model names: (layer, weight name)."""
  # "resnet/stage1_block1_conv1_sn/stage1_block1_conv1/kernel" -> ("stage1_block1_conv1",
  # "kernel"): wrappers (spectral norm) and model names do not change what a weight is.
  parts = [p[:-3] if p.endswith("_sn") else p for p in path.split("/")]
  return parts[-2] if len(parts) > 1 else "", parts[-1]


class AdaptReport(str):
  """The one-line summary `adapt` returns, with the lists behind it as attributes:
  `copied` and `fresh` (model variable paths; a fresh one with a shape mismatch says so)
  and `unused` (checkpoint variable paths nothing was copied from).
  """


def _rng_state(path):
  # Seed-generator states are random-number streams, not weights, and their auto-numbered
  # names differ between processes: a fresh model keeps its own.
  return path.rsplit("/", 1)[-1] == "seed_generator_state"


def adapt(variables, arrays, meta):
  """Copies checkpoint weights onto `variables` by (layer, weight) name.

  Layer names ignore wrappers (a spectral-norm `x_sn/x/kernel` is `x/kernel`). A weight
  whose shape differs but broadcasts (a Dense bias `[C]` onto a BatchEnsemble bias
  `[M, C]`) is broadcast to every member. Returns an `AdaptReport`: what was copied, what
  kept its fresh initialisation (fast weights, GP and noise parameters, mismatched
  shapes) and which checkpoint variables were not used (e.g. a replaced head).
  """
  stored, paths = {}, {}
  for i, (path, _) in enumerate(meta.get("variables", [])):
    if _rng_state(path):
      continue
    stored.setdefault(weight_key(path), arrays[f"model/{i:05d}"])
    paths.setdefault(weight_key(path), path)
  copied, fresh, used = [], [], set()
  for var in variables:
    if _rng_state(var.path):
      continue
    key = weight_key(var.path)
    value = stored.get(key)
    if value is None:
      fresh.append(var.path)
      continue
    try:
      value = np.broadcast_to(value, tuple(var.shape))
    except ValueError:
      fresh.append(f"{var.path} (shape {tuple(var.shape)} vs {value.shape})")
      continue
    var.assign(value)
    copied.append(var.path)
    used.add(key)
  unused = [paths[k] for k in stored if k not in used]

  def show(names):
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")

  mismatched = [p for p in fresh if " (shape " in p]  # Shown first: likely a config error.
  shown = mismatched + [p for p in fresh if p not in mismatched]
  report = AdaptReport(
    f"{len(copied)} variables copied, {len(fresh)} freshly initialised "
    f"[{show(shown)}], {len(unused)} checkpoint variables unused "
    f"[{show(unused)}]"
  )
  report.copied, report.fresh, report.unused = copied, fresh, unused
  return report
