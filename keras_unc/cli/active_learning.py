"""Verb `active-learning`: labelling rounds on top of the one trainer.

    python -m keras_unc active-learning --gin_file=A.gin [--gin_param=...] --workdir=DIR

Runs (or resumes) the rounds configured by `active_learning.*` and the usual `train.*`
bindings, then prints accuracy against the number of labels.
"""

from absl import flags

from keras_unc.cli import flags as common

FLAGS = flags.FLAGS


def define_flags():
  common.define_gin_flags("active_learning.strategy='bald'")
  common.define_workdir("Output folder: rounds, metrics.jsonl, TensorBoard.")


def table(records, workdir):
  """Labelled-set size and accuracy per round, and where the outputs are."""
  lines = ["", "round  labels  accuracy", "-----  ------  --------"]
  lines += [f"{r['round']:>5}  {r['num_labelled']:>6}  {r['accuracy']:.4f}" for r in records]
  lines += [
    "",
    f"metrics:      {workdir}/metrics.jsonl",
    f"TensorBoard:  tensorboard --logdir {workdir}",
    "",
  ]
  return "\n".join(lines)


def main(argv):
  common.start(argv)
  from keras_unc.active_learning import loop

  records = loop.active_learning(FLAGS.workdir)
  print(table(records, FLAGS.workdir), flush=True)
