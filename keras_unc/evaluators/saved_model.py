"""Evaluating an exported SavedModel (`--mode=eval --export_dir=DIR`) like a checkpoint."""

import os

import tensorflow as tf

from keras_unc.evaluators.base import Predictor, to_input_dtype
from keras_unc.evaluators.runner import run_round
from keras_unc.runtime import checkpoints


class SavedModelNetwork:
  """A SavedModel written by `keras_unc.training.export` as a network for `Predictor`.

  Its `serving_default` signature takes the images exactly as stored (uint8
  `[B, H, W, C]`) and returns the output dict. Float images from a preprocessing op
  (e.g. `resize`) are rounded to the signature's dtype, so such sets can differ
  slightly from evaluating the in-memory network, which sees the unrounded floats.
  """

  def __init__(self, export_dir):
    if not tf.saved_model.contains_saved_model(export_dir):
      raise FileNotFoundError(
        f"No SavedModel in {export_dir!r}: export one first "
        "(--mode=export, or train with train.export_at_end=True)."
      )
    self.export_dir = export_dir
    self._loaded = tf.saved_model.load(export_dir)
    if "serving_default" not in self._loaded.signatures:
      raise ValueError(
        f"The SavedModel in {export_dir!r} has no 'serving_default' "
        f"signature (found {sorted(self._loaded.signatures)})."
      )
    self._serve = self._loaded.signatures["serving_default"]
    kwargs = self._serve.structured_input_signature[1]
    if len(kwargs) != 1:
      raise ValueError(
        f"'serving_default' of {export_dir!r} must take one images tensor, "
        f"got inputs {sorted(kwargs)}."
      )
    ((self._input_name, spec),) = kwargs.items()
    self.image_dtype = spec.dtype
    self.image_shape = tuple(spec.shape[1:])

  def __call__(self, images, training=False):
    del training  # A SavedModel serves inference only.
    images = tf.convert_to_tensor(images)  # NumPy arrays too (`keras_unc.load(d)(array)`).
    return self._serve(**{self._input_name: to_input_dtype(images, self.image_dtype)})


def _infer_step(export_dir, workdir):
  """The newest checkpoint step next to the export (or in workdir), else 0."""
  for folder in (os.path.dirname(os.path.abspath(export_dir)), workdir):
    path = os.path.join(folder, "checkpoints")
    if os.path.isdir(path):
      steps = checkpoints.Checkpointer(path).steps()
      if steps:
        return steps[0]
  return 0


def evaluate_export(export_dir, evaluators, workdir=None, step=None, batch_size=512):
  """Runs one evaluation round of `evaluators` over the SavedModel in `export_dir`.

  Args:
    export_dir: the folder written by `keras_unc.training.export.export_saved_model`.
    evaluators: the evaluators to run (the CLI passes the gin binding of `train.evaluators`).
    workdir: where `metrics.jsonl`, `plots/` and the TensorBoard events (`eval/`) go.
    step: the step the metrics are logged at (default: the newest checkpoint step beside
      the export or in workdir, else 0).
    batch_size: evaluation batch size (the CLI passes `train.eval_batch_size`).

  Returns:
    `{"step", "metrics", "export"}`, like `training.train` (for the CLI's summary table).
  """
  if not evaluators:
    raise ValueError("No evaluators to run: bind train.evaluators in the gin config.")
  workdir = workdir or os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(workdir, exist_ok=True)
  step = _infer_step(export_dir, workdir) if step is None else step
  predictor = Predictor(SavedModelNetwork(export_dir), batch_size)
  writer = tf.summary.create_file_writer(os.path.join(workdir, "eval"))
  found = run_round(evaluators, predictor, workdir, writer, step)
  writer.flush()
  return {"step": step, "metrics": found, "export": export_dir}
