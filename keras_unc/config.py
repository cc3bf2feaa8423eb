"""Gin helpers: parse files and bindings with helpful errors, save the operative config.

A leaf: it imports nothing of keras_unc. Configurables register when their modules are
imported; `keras_unc.configure` (or `keras_unc.cli.registry`) imports them all first.
The gin files ship inside the package (`keras_unc.gin_configs`, the repo's top-level
`gin_configs/`) and are found with `importlib.resources`; a path the user gives is tried
first.
"""

import copy
import difflib
import importlib.resources
import inspect
import os
import re

import gin


def _gin_dir():
  # The wheel's keras_unc/gin_configs/, or in an editable
  # install the repo's gin_configs/ through setuptools' package_dir mapping.
  return str(importlib.resources.files("keras_unc.gin_configs"))


GIN_DIR = _gin_dir()


class ConfigError(ValueError):
  """A gin file or binding names something that does not exist."""


def _configurables():
  return sorted(
    {sel.split(".")[-1] for sel, _ in gin.config._REGISTRY.items()}
    | {sel for sel, _ in gin.config._REGISTRY.items()}
  )


def _explain(error):
  """Adds close matches to gin's 'no configurable' / 'no parameter' errors."""
  msg = str(error)
  m = re.search(r"No configurable matching (?:reference )?'@?([\w./]+?)(?:\(\))?'", msg)
  if m:
    name = m.group(1)
    close = difflib.get_close_matches(name, _configurables(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
      f"Unknown gin configurable {name!r}.{hint} Configurables register when their "
      "module is imported: check the spelling in your --gin_file/--gin_param, and from "
      f"Python call keras_unc.configure(...) (it imports them all).\n{msg}"
    )
  m = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", msg)
  if m:
    name, param = m.groups()
    fn = gin.config._REGISTRY.get_match(name).wrapped
    params = list(inspect.signature(fn).parameters)
    close = difflib.get_close_matches(param, params, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
      f"Unknown gin parameter {name}.{param}.{hint} "
      f"Valid parameters of {name}: {', '.join(params)}.\n{msg}"
    )
  return None


def _search_gin_dir_first():
  # gin tries the working directory, then Python-package resources; the latter crashes on
  # a folder that imports as a namespace package (e.g. the repo's data/ for
  # 'data/mnist.gin'). Looking in gin_configs/ first resolves includes before that.
  prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
  if prefixes is None:
    gin.add_config_file_search_path(GIN_DIR)
  elif GIN_DIR not in prefixes:
    prefixes.insert(0, GIN_DIR)


def resolve_gin_file(path):
  """The file a user's `--gin_file` names: the path as given (relative to the working
  directory) first, else the same path inside the shipped `gin_configs/`.
  """
  if os.path.exists(path):
    return os.path.abspath(path)
  shipped = os.path.join(GIN_DIR, path)
  if os.path.exists(shipped):
    return shipped
  raise ConfigError(
    f"gin file {path!r} not found (looked relative to the working directory and to {GIN_DIR})."
  )


def parse(gin_files=(), gin_params=(), finalize=True):
  """Parses gin files then bindings (later ones win).

  A file is looked up as given, then in the shipped `gin_configs/`; `include` lines inside
  gin files are looked up in `gin_configs/` first, then relative to the working directory.
  """
  _search_gin_dir_first()
  gin_files = [resolve_gin_file(path) for path in gin_files]
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_params), finalize_config=finalize)
  except ValueError as e:
    explained = _explain(e)
    if explained:
      raise ConfigError(explained) from e
    raise


def query(name, default=None):
  """The value bound to `name` (e.g. "train.evaluators") in the parsed config, else `default`.

  References are evaluated: `[@ClassificationEvaluator()]` comes back as the built objects
  (gin's deep copy of a configurable reference calls it).
  """
  try:
    return copy.deepcopy(gin.query_parameter(name))
  except ValueError:
    return default


def value(name):
  """The value `name` ("selector.param", e.g. "gp_head.num_inducing") takes in the parsed
  config: its binding, else the default in the configurable's Python signature (gin files
  bind only what differs from it). Raises ValueError for an unknown name or a required
  parameter left unbound.
  """
  try:
    return gin.query_parameter(name)
  except ValueError:
    pass
  selector, param = name.rsplit(".", 1)
  match = gin.config._REGISTRY.get_match(selector.split("/")[-1])
  if match is None:
    raise ValueError(f"Unknown gin configurable in {name!r}.")
  target = match.wrapped.__init__ if inspect.isclass(match.wrapped) else match.wrapped
  params = inspect.signature(target).parameters
  if param not in params:
    raise ValueError(f"{selector} has no parameter {param!r}.")
  default = params[param].default
  if default is inspect.Parameter.empty or default is gin.REQUIRED:
    raise ValueError(f"{name} is required and not bound.")
  return default


def save_operative_config(workdir, summary_writer=None):
  """Writes the operative config to `workdir/config.gin` and to TensorBoard as text."""
  text = gin.operative_config_str()
  tmp = os.path.join(workdir, "config.gin.tmp")
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, os.path.join(workdir, "config.gin"))
  if summary_writer is not None:
    import tensorflow as tf

    md = "\n".join("    " + line for line in text.splitlines())  # Markdown code block.
    with summary_writer.as_default():
      tf.summary.text("gin/operative_config", md, step=0)
  return text
