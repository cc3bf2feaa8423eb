"""Turns TensorFlow's input-pipeline failures into errors that name the problem and the fix.

tf.data reports a corrupt image or a truncated TFRecord deep inside `fit` as a bare
`InvalidArgumentError` / `DataLossError`. `explained(dataset, split, checkpointer)`
re-raises the known ones as `DataError` naming the dataset, what is wrong, what to do,
and that the checkpoints are intact (nothing is saved after the failing step).
"""

import contextlib
import re

import tensorflow as tf


class DataError(ValueError):
  """The training data is unreadable or invalid."""


_PATTERNS = (
  # (regex on TF's message, problem, fix)
  (
    r"truncated record|corrupted record|DataLoss|data loss",
    "a TFRecord file is truncated or corrupted",
    "re-prepare the dataset (e.g. `tfds build <name> --data_dir=<dir>` on a machine with "
    "network) or copy its files again, and compare their sizes/checksums with the source",
  ),
  (
    r"Unknown image file format|Invalid JPEG|Uncompress failed|Invalid PNG|"
    r"DecodeImage|DecodePng|DecodeJpeg",
    "an example's image bytes cannot be decoded (corrupt or not an image)",
    "re-prepare the dataset, or remove the bad example (its index is in the TF message); "
    "check get_source.image_key names the image feature",
  ),
  (
    r"Label out of range|outside \[0, num_classes",
    "a label is outside [0, num_classes)",
    "check get_source.label_key names the class feature and that the dataset's num_classes "
    "matches; remap or drop the bad labels",
  ),
)


def explain(error, dataset, split, checkpointer=None):
  """Returns a `DataError` for a known tf.data failure, else None."""
  text = getattr(error, "message", None) or str(error)
  for pattern, problem, fix in _PATTERNS:
    if re.search(pattern, text, flags=re.IGNORECASE):
      kept = checkpointer.steps() if checkpointer is not None else []
      saved = (
        f"The newest checkpoint ({checkpointer.path(kept[0])}) is intact; rerun the "
        "same command to resume after the fix."
        if kept
        else "No checkpoint was lost."
      )
      lines = text.strip().splitlines()
      first = next(
        (ln for ln in lines if re.search(pattern, ln, flags=re.IGNORECASE)),
        lines[0] if lines else "",
      ).strip()[:400]
      return DataError(
        f"Training data {dataset}/{split}: {problem}. Fix: {fix}. {saved}\nTensorFlow said: {first}"
      )
  return None


@contextlib.contextmanager
def explained(dataset, split, checkpointer=None):
  """Re-raises tf.data failures inside the block as `DataError` (see `explain`)."""
  try:
    yield
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    clear = explain(e, dataset, split, checkpointer)
    if clear is None:
      raise
    raise clear from e
