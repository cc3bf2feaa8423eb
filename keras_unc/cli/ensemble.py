"""Verb `ensemble`: a deep ensemble of independently trained runs as one SavedModel.

    python -m keras_unc ensemble --members=DIR1,DIR2,DIR3 --workdir=OUT [--gin_file=X.gin]

The members (training workdirs of one architecture and method, e.g. three train.seed
values) are checked first; a difference is refused (exit code 2) naming it. The ensemble
is evaluated with train.evaluators (metrics in OUT/metrics.jsonl) and exported to
OUT/export. Without --gin_file the first member's config.gin is used.
"""

import os

from absl import flags

from keras_unc.cli import flags as common
from keras_unc.cli import train as train_cli

FLAGS = flags.FLAGS


def define_flags():
  common.define_gin_flags("train.eval_batch_size=256")
  common.define_workdir("Output folder of the ensemble: metrics.jsonl, ensemble.json, export/.")
  flags.DEFINE_list("members", None, "Comma-separated training workdirs (at least 2).")
  flags.mark_flag_as_required("members")


def main(argv):
  if not FLAGS.gin_file:
    found = os.path.join(FLAGS.members[0], "config.gin")
    if not os.path.isfile(found):
      common.fail(f"No --gin_file and no {found}: give the members' gin config.")
    FLAGS.gin_file = [found]
  common.start(argv)
  from keras_unc.runtime.checkpoints import CheckpointMismatchError
  from keras_unc.training import ensemble

  try:
    result = ensemble.build_ensemble(FLAGS.members, FLAGS.workdir)
  except (ensemble.EnsembleMismatchError, CheckpointMismatchError, FileNotFoundError) as e:
    common.fail(str(e))
  except ValueError as e:
    common.fail(str(e))
  print(train_cli.summary_table(result, FLAGS.workdir), flush=True)
