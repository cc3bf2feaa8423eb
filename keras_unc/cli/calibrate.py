r"""Verb `calibrate`: fit post-hoc calibration, conformal sets and an OOD detector on a held-out
split of a trained workdir, and re-export its SavedModel with them inside.

    python -m keras_unc calibrate --workdir=DIR [--gin_file=X.gin] \\
        --gin_param="calibrate.split='train[55000:]'" \\
        --gin_param="calibrate.calibrator='temperature'" --gin_param="calibrate.conformal='aps'"

Without --gin_file the training run's operative config `DIR/config.gin` is used. The state
goes to `DIR/posthoc/` (refused later if the checkpoint changes); the metrics before and
after (`posthoc/...`) to `DIR/metrics.jsonl`. A calibration split that overlaps the
training data, or is too small for the conformal alpha, is refused (exit code 2) and
nothing is written.
"""

import os

from absl import flags

from keras_unc.cli import flags as common
from keras_unc.cli import train as train_cli

FLAGS = flags.FLAGS


def define_flags():
  common.define_gin_flags("calibrate.calibrator='temperature'")
  common.define_workdir("The trained workdir (checkpoints/, config.gin); posthoc/ goes there.")


def main(argv):
  if not FLAGS.gin_file:
    found = os.path.join(FLAGS.workdir, "config.gin")
    if not os.path.isfile(found):
      common.fail(
        f"No --gin_file and no {found}: give the gin config the workdir was trained with."
      )
    FLAGS.gin_file = [found]
  common.start(argv)
  from keras_unc.posthoc.state import PosthocStateError, StalePosthocError
  from keras_unc.runtime.checkpoints import CheckpointMismatchError
  from keras_unc.training import calibrate

  try:
    result = calibrate.calibrate(FLAGS.workdir)
  except (
    calibrate.CalibrationDataError,
    StalePosthocError,
    PosthocStateError,
    CheckpointMismatchError,
    FileNotFoundError,
  ) as e:
    common.fail(str(e))
  except ValueError as e:  # Too-small splits and bad component settings name the fix.
    common.fail(str(e))
  fitted = ", ".join(f"{c.kind} {c.name}" for c in result["components"])
  print(f"Post-hoc state: {result['posthoc_dir']} ({fitted})", flush=True)
  print(train_cli.summary_table(result, FLAGS.workdir), flush=True)
