"""Flags every verb shares, defined once, and the helpers the verbs use to start and fail."""

import logging
import sys

from absl import flags

FLAGS = flags.FLAGS


def define_gin_flags(example_param: str = "train.total_steps=100") -> None:
  """`--gin_file` (repeatable, applied in order) and `--gin_param` (later ones win)."""
  flags.DEFINE_multi_string(
    "gin_file",
    [],
    "Gin config file(s), applied in order: a path, "
    "else relative to the gin_configs/ shipped with keras_unc.",
  )
  flags.DEFINE_multi_string("gin_param", [], f"Gin bindings, e.g. '{example_param}'.")


def define_workdir(help_text: str) -> None:
  flags.DEFINE_string("workdir", None, help_text)
  flags.mark_flag_as_required("workdir")


def fail(message: str, code: int = 2) -> None:
  """Prints `ERROR: message` on stderr and exits with `code` (2: bad usage or input)."""
  print(f"ERROR: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


class _Console(logging.Formatter):
  """`message` for INFO, `WARNING: message` (or `ERROR: ...`) above: what the user reads."""

  def format(self, record):
    text = super().format(record)
    return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


def show_library_logs(level: int = logging.INFO) -> None:
  """Prints the library's log records (`logging.getLogger("keras_unc.*")`) on stdout as
  plain lines: the library logs, the command line decides what the user sees.
  """
  logger = logging.getLogger("keras_unc")
  if not any(isinstance(h.formatter, _Console) for h in logger.handlers):
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Console("%(message)s"))
    logger.addHandler(handler)
  logger.setLevel(level)
  logger.propagate = False  # Not a second time through absl's handler on the root logger.


def start(argv, extra_params=()) -> None:
  """Refuses stray arguments, shows the library's logs, quiets TF/absl INFO chatter (it hides
  the progress bar) unless --verbosity is given, registers the configurables and parses the
  gin flags (a config error prints one line and exits with 2).
  """
  from absl import app
  from absl import logging as absl_logging

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  verbosity = FLAGS["verbosity"]
  if verbosity.present:  # absl's scale (-1 warnings, 0 info, 1 debug) in logging's levels.
    show_library_logs(absl_logging.converter.absl_to_standard(verbosity.value))
  else:
    show_library_logs(logging.INFO)
    absl_logging.set_verbosity(absl_logging.WARNING)
  # Imported here so --help is instant (no TensorFlow import).
  from keras_unc import config
  from keras_unc.cli import registry

  registry.register_configurables()
  try:
    config.parse(FLAGS.gin_file, list(FLAGS.gin_param) + list(extra_params))
  except config.ConfigError as e:
    fail(str(e))
