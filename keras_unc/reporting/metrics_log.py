"""The metrics log: one JSON line per evaluation in `workdir/metrics.jsonl`, plus the same
values as TensorBoard scalars.
"""

import json
import os

import numpy as np
import tensorflow as tf

METRICS_FILE = "metrics.jsonl"


def write_metrics(workdir, writer, step, metrics):
  """Appends one JSON line to `workdir/metrics.jsonl` and writes TensorBoard scalars."""
  record = {"step": int(step), **{k: float(v) for k, v in sorted(metrics.items())}}
  with open(os.path.join(workdir, METRICS_FILE), "a") as f:
    f.write(json.dumps(record) + "\n")
  with writer.as_default(step=step):
    for name, value in metrics.items():
      if np.isfinite(value):
        tf.summary.scalar(name, float(value))
  writer.flush()
  return record
