"""Keeps the checkpoint of the best evaluation round by a chosen metric (URL's `--eval-metric`).

After every evaluation round, `BestCheckpoint.update` compares the round's value of the
metric with the best so far; on an improvement it puts the model and optimizer state of
that step into `WORKDIR/best/ckpt-<step>` (hard links to the regular checkpoint of the
same step when there is one, else a fresh save; written under a temporary name and
renamed, so never half-written, and never pruned by keep-last-K), then records the step
and every metric of that round in `WORKDIR/best.json` (atomically replaced). Each round
also reports `best_<metric>` for every metric of the best round and `best_step`, so
`metrics.jsonl` and TensorBoard carry the best values. A restart reads `best.json`, so
the best survives resumes.
"""

import json
import logging
import math
import os
import shutil

from keras_unc.runtime import checkpoints, files

log = logging.getLogger(__name__)

BEST_DIR = "best"
BEST_JSON = "best.json"
MODES = ("max", "min")


def resolve_metric(name, found):
  """The key of `found` meaning `name`: itself, or the one key ending in `/<name>`.

  So `avg_downstream_auroc_correct` finds `retrieval/avg_downstream_auroc_correct`.
  """
  if name in found:
    return name
  matches = [k for k in found if k.rsplit("/", 1)[-1] == name]
  if len(matches) == 1:
    return matches[0]
  if matches:
    raise ValueError(
      f"train.eval_metric={name!r} is ambiguous: it matches {sorted(matches)}; give the full name."
    )
  raise ValueError(
    f"train.eval_metric={name!r} is not among the evaluation metrics: "
    f"choose one of {sorted(found)}."
  )


def _link_or_copy(src_dir, dst_dir):
  os.makedirs(dst_dir)
  for name in os.listdir(src_dir):
    src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
    try:
      os.link(src, dst)  # Checkpoint files are never modified in place: sharing is safe.
    except OSError:
      shutil.copy2(src, dst)


class BestCheckpoint:
  """Tracks the best evaluation round of `workdir` by `metric` and keeps its checkpoint.

  Args:
    workdir: the training folder (`best/` and `best.json` are written there).
    metric: metric name as reported (`retrieval/avg_downstream_auroc_correct`) or its
      unique last part (`avg_downstream_auroc_correct`).
    mode: "max" (higher is better) or "min".
  """

  def __init__(self, workdir, metric, mode="max"):
    if mode not in MODES:
      raise ValueError(f"train.eval_metric_mode must be one of {MODES}, got {mode!r}.")
    if not isinstance(metric, str) or not metric:
      raise ValueError(f"train.eval_metric must be a metric name, got {metric!r}.")
    self.metric, self.mode = metric, mode
    self.directory = os.path.join(workdir, BEST_DIR)
    self.json_path = os.path.join(workdir, BEST_JSON)
    self.state = self._load()

  def _load(self):
    if not os.path.exists(self.json_path):
      return None
    with open(self.json_path) as f:
      state = json.load(f)
    if (state.get("requested"), state.get("mode")) != (self.metric, self.mode):
      log.warning(
        "%s kept the best by %s (%s); this run selects by %s (%s): starting a new best.",
        self.json_path,
        state.get("requested"),
        state.get("mode"),
        self.metric,
        self.mode,
      )
      return None
    if not os.path.isdir(os.path.join(os.path.dirname(self.json_path), state["path"])):
      log.warning(
        "%s names %s, which is missing: starting a new best.", self.json_path, state["path"]
      )
      return None
    return state

  @property
  def step(self):
    return None if self.state is None else self.state["step"]

  @property
  def value(self):
    return None if self.state is None else self.state["value"]

  def improves(self, value):
    """Whether `value` beats the best so far (NaN never does)."""
    if not math.isfinite(value):
      return False
    if self.state is None:
      return True
    return value > self.value if self.mode == "max" else value < self.value

  def _save(self, step, network, optimizer, checkpointer):
    saver = checkpoints.Checkpointer(self.directory, keep=1 << 30)  # Pruned below, by us.
    final = saver.path(step)
    source = checkpointer.path(step) if checkpointer is not None else None
    if source and os.path.isdir(source):
      tmp = files.tmp_path(final)
      _link_or_copy(source, tmp)
      files.replace_dir(tmp, final)
    else:
      saver.save(step, network, optimizer)
    return final

  def update(self, step, found, network, optimizer, checkpointer=None):
    """Compares round `step` (metrics `found`) with the best; returns the `best_*` values.

    Args:
      step: the training step of the round.
      found: the round's metrics.
      network, optimizer: saved when the round is the new best and `checkpointer` has no
        checkpoint of `step`.
      checkpointer: the run's `checkpoints.Checkpointer` (its checkpoint of `step`, if
        any, is hard-linked instead of saving again).
    """
    key = resolve_metric(self.metric, found)
    value = float(found[key])
    if self.improves(value):
      path = self._save(int(step), network, optimizer, checkpointer)
      state = {
        "requested": self.metric,
        "metric": key,
        "mode": self.mode,
        "value": value,
        "step": int(step),
        "path": os.path.join(BEST_DIR, os.path.basename(path)),
        "metrics": {k: float(v) for k, v in found.items()},
      }
      files.write_json(self.json_path, state, indent=1, sort_keys=True)
      self.state = state
      for name in os.listdir(self.directory):  # Only now: best.json names the new one.
        if name != os.path.basename(path):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      log.info("New best %s = %.6g at step %d: %s", key, value, step, path)
    return self.values()

  def values(self):
    """`{best_<metric>: value}` of the best round and `best_step` (empty before any)."""
    if self.state is None:
      return {}
    return {
      **{f"best_{k}": v for k, v in self.state["metrics"].items()},
      "best_step": float(self.state["step"]),
    }

  def path(self):
    """Folder of the best checkpoint (readable with `checkpoints.read`), or None."""
    if self.state is None:
      return None
    return os.path.join(os.path.dirname(self.json_path), self.state["path"])
