"""XLA where asked, or an error saying why not.

Keras turns `jit_compile=True` off with a printed line, not an error, when TensorFlow's op
determinism is on, when a layer has `supports_jit = False`, or on macOS GPUs; the run then
goes on without XLA (on accelerators, 1.3-2x slower for ViTs) and nothing notices.
`set_op_determinism` resolves determinism against XLA before anything is built, and
`check_jit_compile` refuses a compiled model whose `jit_compile` is not what was asked.
"""

import logging
import platform

import tensorflow as tf
from tensorflow.python.framework import config as tf_config

log = logging.getLogger(__name__)


def set_op_determinism(deterministic_ops, jit_compile):
  """Sets TensorFlow's op determinism for a run, refusing it together with XLA.

  Args:
    deterministic_ops: enable op determinism (bit-identical runs and resumes).
    jit_compile: the run XLA-compiles its functions. Op determinism makes Keras drop XLA
      (not every op has a deterministic XLA kernel), so the two are refused together; op
      determinism left on in this process by an earlier run is switched off.

  Raises:
    ValueError: both are True.
  """
  if deterministic_ops and jit_compile:
    raise ValueError(
      "train.jit_compile = True and train.deterministic_ops = True cannot be honoured "
      "together: TensorFlow's op determinism (tf.config.experimental.enable_op_determinism) "
      "disables XLA, and Keras would silently run without it. Set one of them to False: "
      "train.deterministic_ops = False for an XLA-compiled run (the accelerator recipes), "
      "or train.jit_compile = False for bit-identical runs and resumes."
    )
  if deterministic_ops:
    tf.config.experimental.enable_op_determinism()
  elif jit_compile and tf_config.is_op_determinism_enabled():
    # Process-wide state left by an earlier run (or the caller): it would drop XLA here.
    log.warning(
      "TensorFlow op determinism was on in this process; train.jit_compile = True with "
      "train.deterministic_ops = False switches it off so that XLA runs."
    )
    tf_config.disable_op_determinism()


def _reasons(model):
  """Why Keras may have compiled `model` without XLA (as `keras.src.trainers.trainer`)."""
  found = []
  if tf_config.is_op_determinism_enabled():
    found.append("TensorFlow op determinism is on (train.deterministic_ops = True)")
  layers = sorted({type(x).__name__ for x in model._flatten_layers() if not x.supports_jit})
  if layers:
    found.append(f"layers with supports_jit = False: {', '.join(layers)}")
  if platform.system() == "Darwin" and tf.config.list_physical_devices("GPU"):
    found.append("Keras does not XLA-compile TensorFlow on macOS GPUs")
  return found


def check_jit_compile(model, asked, setting="jit_compile"):
  """Raises if XLA was `asked` for but the compiled Keras `model` would run without it.

  Args:
    model: a compiled `keras.Model`.
    asked: the `jit_compile` passed to `compile` (True or False).
    setting: the user's name of that setting, for the message (e.g. `train.jit_compile`).

  Raises:
    ValueError: Keras dropped XLA (the message says why and how to fix it), or functions
      run eagerly (`tf.config.run_functions_eagerly(True)`), where XLA never runs.
  """
  if not asked:
    return
  reasons = [] if model.jit_compile else _reasons(model) or ["Keras gave no reason"]
  if tf.config.functions_run_eagerly():
    reasons.append("tf.config.run_functions_eagerly(True) is on")
  if reasons:
    raise ValueError(
      f"{setting} = True, but {model.name} would run without XLA: {'; '.join(reasons)}. "
      f"Remove the cause or set {setting} = False."
    )
