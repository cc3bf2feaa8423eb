"""Gin helpers: parse files and bindings with helpful errors, save the operative config."""

import difflib
import inspect
import os
import re
import sys

import gin
import tensorflow as tf

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")


class ConfigError(ValueError):
  """A gin file or binding names something that does not exist."""


def _configurables():
  return sorted({sel.split(".")[-1] for sel, _ in gin.config._REGISTRY.items()}
                | {sel for sel, _ in gin.config._REGISTRY.items()})


def _explain(error):
  """Adds close matches to gin's 'no configurable' / 'no parameter' errors."""
  msg = str(error)
  m = re.search(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'", msg)
  if m:
    name = m.group(1)
    close = difflib.get_close_matches(name, _configurables(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"Unknown gin configurable {name!r}.{hint} Registered configurables come from "
            f"keras_unc modules; check the spelling in your --gin_file/--gin_param.\n{msg}")
  m = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", msg)
  if m:
    name, param = m.groups()
    fn = gin.config._REGISTRY.get_match(name).wrapped
    params = list(inspect.signature(fn).parameters)
    close = difflib.get_close_matches(param, params, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"Unknown gin parameter {name}.{param}.{hint} "
            f"Valid parameters of {name}: {', '.join(params)}.\n{msg}")
  return None


def _register_configurables():
  # Importing the modules is what registers their @gin.configurable names.
  # pylint: disable=import-outside-toplevel,unused-import
  from keras_unc import active_learning, backbones, evaluators, methods, train  # noqa: F401
  from keras_unc.transfer import cat, distill, layerwise  # noqa: F401


def _search_gin_dir_first():
  # gin tries the working directory, then Python-package resources; the latter crashes on
  # a folder that imports as a namespace package (e.g. the repo's data/ for
  # 'data/mnist.gin'). Looking in gin_configs/ first resolves includes before that.
  prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
  if prefixes is None:
    gin.add_config_file_search_path(GIN_DIR)
  elif GIN_DIR not in prefixes:
    prefixes.insert(0, GIN_DIR)


def parse(gin_files=(), gin_params=(), finalize=True):
  """Parses gin files then bindings (later ones win), searching `gin_configs/` too."""
  _search_gin_dir_first()
  _register_configurables()
  for path in gin_files:
    if not os.path.exists(path) and not os.path.exists(os.path.join(GIN_DIR, path)):
      raise ConfigError(f"gin file {path!r} not found (looked relative to the working "
                        f"directory and to {GIN_DIR}).")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_params),
                                        finalize_config=finalize)
  except ValueError as e:
    explained = _explain(e)
    if explained:
      raise ConfigError(explained) from e
    raise


def parse_or_exit(gin_files=(), gin_params=()):
  """`parse` for command-line entry points: a config error prints one line, exits with 2."""
  try:
    parse(gin_files, gin_params)
  except ConfigError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(2)


def save_operative_config(workdir, summary_writer=None):
  """Writes the operative config to `workdir/config.gin` and to TensorBoard as text."""
  text = gin.operative_config_str()
  tmp = os.path.join(workdir, "config.gin.tmp")
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, os.path.join(workdir, "config.gin"))
  if summary_writer is not None:
    md = "\n".join("    " + line for line in text.splitlines())  # Markdown code block.
    with summary_writer.as_default():
      tf.summary.text("gin/operative_config", md, step=0)
  return text
