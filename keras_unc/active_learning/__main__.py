"""`python -m keras_unc.active_learning --gin_file=A.gin [--gin_param=...] --workdir=DIR`.

Runs (or resumes) the active-learning rounds configured by `active_learning.*` and the
usual `train.*` bindings, then prints accuracy against the number of labels.
"""


from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), applied in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. active_learning.strategy='bald'.")
flags.DEFINE_string("workdir", None, "Output folder: rounds, metrics.jsonl, TensorBoard.")
flags.mark_flag_as_required("workdir")


def table(records, workdir):
  """Labelled-set size and accuracy per round, and where the outputs are."""
  lines = ["", "round  labels  accuracy", "-----  ------  --------"]
  lines += [f"{r['round']:>5}  {r['num_labelled']:>6}  {r['accuracy']:.4f}" for r in records]
  lines += ["", f"metrics:      {workdir}/metrics.jsonl",
            f"TensorBoard:  tensorboard --logdir {workdir}", ""]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # Imported here so --help is instant and configurables register before parsing.
  # pylint: disable=import-outside-toplevel
  from keras_unc import config
  from keras_unc.active_learning import loop
  config.parse_or_exit(FLAGS.gin_file, FLAGS.gin_param)
  records = loop.active_learning(FLAGS.workdir)
  print(table(records, FLAGS.workdir), flush=True)


if __name__ == "__main__":
  app.run(main)
