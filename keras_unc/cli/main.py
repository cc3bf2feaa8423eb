"""`python -m keras_unc <verb> [flags]` (console script `keras-unc`): one command line.

Each verb defines only its own flags (the shared ones come from `cli/flags.py`), so
`python -m keras_unc <verb> --help` lists exactly what that verb takes.
"""

import sys

from absl import app, flags

from keras_unc.cli import active_learning, cache, calibrate, ensemble, plan, train
from keras_unc.cli import flags as common

# verb -> (one line of help, module with define_flags/main, define_flags keyword arguments)
VERBS = {
  "train": (
    "train (and evaluate every train.eval_every steps), then export",
    train,
    dict(mode="train_and_eval", modes=("train", "train_and_eval")),
  ),
  "eval": (
    "evaluate the newest checkpoint, or an exported SavedModel (--export_dir)",
    train,
    dict(mode="eval", modes=("eval",)),
  ),
  "export": (
    "write the SavedModel of the newest checkpoint to WORKDIR/export",
    train,
    dict(mode="export", modes=("export",)),
  ),
  "calibrate": (
    "fit calibration, conformal sets and an OOD detector on held-out data; re-export",
    calibrate,
    {},
  ),
  "ensemble": (
    "a deep ensemble of trained runs, evaluated and exported as one model",
    ensemble,
    {},
  ),
  "cache": ("build or resume a frozen-backbone feature cache (train on cached:DIR)", cache, {}),
  "active-learning": ("run or resume active-learning rounds", active_learning, {}),
  "plan": (
    "the cost of a config before training: parameters, FLOPs, memory, wall time",
    plan,
    {},
  ),
}


def usage() -> str:
  width = max(map(len, VERBS))
  lines = ["usage: python -m keras_unc <verb> [--flags]   (or: keras-unc <verb> ...)", "", "verbs:"]
  lines += [f"  {verb:<{width}}  {text}" for verb, (text, _, _) in VERBS.items()]
  lines += [
    "",
    "`python -m keras_unc <verb> --help` lists the flags of a verb.",
    "`python -m keras_unc.main --gin_file=...` is the same as the `train` verb with "
    "--mode (train|eval|train_and_eval|export).",
  ]
  return "\n".join(lines)


def run(argv=None) -> None:
  """Dispatches `argv[1]` to its verb; `--help` (or no verb) prints the verbs."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  verb = argv[1]
  if verb not in VERBS:
    print(f"ERROR: unknown verb {verb!r}.\n\n{usage()}", file=sys.stderr)
    sys.exit(2)
  _, module, kwargs = VERBS[verb]
  run_verb(module, kwargs, [f"python -m keras_unc {verb}", *argv[2:]])


def run_verb(module, kwargs, argv) -> None:
  """Defines the verb's flags and runs its `main` under absl; `--help` lists those flags
  (absl's own lists only the flags of the `__main__` module, i.e. none here).
  """
  module.define_flags(**kwargs)
  if any(a in ("-h", "--help", "-help", "--helpshort") for a in argv[1:]):
    doc = (module.__doc__ or "").strip()
    print(f"{doc}\n\nflags of {argv[0]}:")
    for owner in (common, module):
      print(flags.FLAGS.module_help(owner))
    sys.exit(0)
  app.run(module.main, argv=argv)
