"""keras_unc: pretrain, finetune and evaluate uncertainty-aware image models (TF + Keras 3).

The Python front door (the command line is `python -m keras_unc <verb>`):

    import keras_unc
    keras_unc.configure(["testing/tiny.gin"], ["train.total_steps = 20"])  # optional: gin
    result = keras_unc.train("workdir")  # the one trainer; keyword arguments win over gin
    model = keras_unc.load("workdir/export")
    outputs = model(images)  # {"logits", "probs", "uncertainty", "embedding", ...}

Methods, heads, modifiers, backbones and evaluators are plain classes and functions with
keyword arguments (`keras_unc.methods`, `keras_unc.backbones`, `keras_unc.evaluators`);
gin binds exactly those arguments. The attributes below load lazily, so importing a
subpackage (e.g. `keras_unc.metrics`) does not import the trainer.

Backends: the trainer, evaluators and export need TensorFlow, so where TensorFlow is
installed and `KERAS_BACKEND` is unset this sets it to "tensorflow". `keras_unc.layers`,
`keras_unc.backbones` and the method heads (`keras_unc.methods.heads`) also run under
Keras' JAX backend and import without TensorFlow: set `KERAS_BACKEND=jax` before the first
`import keras` (without TensorFlow and without the variable, Keras' own default applies).
"""

import importlib.util as _importlib_util
import os as _os


def _tensorflow_installed():
  try:
    return _importlib_util.find_spec("tensorflow") is not None
  except ImportError:  # An import hook that refuses TensorFlow (tests/layers/test_jax_backend.py).
    return False


_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if _tensorflow_installed():
  _os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
__all__ = ["calibrate", "configure", "ensemble", "load", "train"]


def configure(gin_files=(), gin_params=(), finalize=True):
  """Registers every keras_unc configurable, then parses gin files and bindings (later ones
  win; files are looked up as given, then in the gin_configs/ shipped with the package).

  Raises `keras_unc.config.ConfigError` naming a misspelt configurable or parameter.
  """
  from keras_unc import config
  from keras_unc.cli import registry

  registry.register_configurables()
  config.parse(gin_files, gin_params, finalize=finalize)


def train(workdir, mode="train_and_eval", **kwargs):
  """Runs the one trainer (`keras_unc.training.train`) in `workdir`; keyword arguments (e.g.
  `dataset`, `total_steps`, `method`, `network=dict(backbone=..., image_size=...)`) win over
  the gin config. Returns `{"step", "metrics", "export", "network"}`.
  """
  from keras_unc.training import trainer

  return trainer.train(workdir, mode, **kwargs)


def calibrate(workdir, **kwargs):
  """Fits post-hoc components on a held-out split of a trained `workdir` and re-exports it
  (`keras_unc.training.calibrate.calibrate`); keyword arguments (e.g. `split`,
  `calibrator="temperature"`, `conformal="aps"`, `detector="energy"`) win over gin.
  """
  from keras_unc.training import calibrate as calibrate_lib

  return calibrate_lib.calibrate(workdir, **kwargs)


def ensemble(members, workdir, **kwargs):
  """Builds, evaluates and exports the deep ensemble of trained `members` (workdirs) in
  `workdir` (`keras_unc.training.ensemble.build_ensemble`).
  """
  from keras_unc.training import ensemble as ensemble_lib

  return ensemble_lib.build_ensemble(members, workdir, **kwargs)


def load(export_dir):
  """The SavedModel in `export_dir` as a callable: `load(d)(images) -> output dict`, images
  as stored in the dataset (e.g. uint8 `[B, H, W, C]`).
  """
  from keras_unc.evaluators.saved_model import SavedModelNetwork

  return SavedModelNetwork(export_dir)
