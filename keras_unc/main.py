"""Command-line entry: `python -m keras_unc.main --gin_file=X.gin --workdir=DIR [--mode=...]`.

Parses gin files and bindings (later ones win), then runs the one trainer. Flags
`--strategy` and `--tpu` are shortcuts for `get_strategy.name` / `get_strategy.tpu`.
"""

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), applied in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'train.total_steps=100'.")
flags.DEFINE_string("workdir", None, "Output folder: checkpoints, TensorBoard, metrics, export.")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval", "export"],
                  "What to run.")
flags.DEFINE_string("strategy", None, "auto | one_device | mirrored | multi_worker | tpu.")
flags.DEFINE_string("tpu", None, "TPU name or address (Cloud TPU VM: 'local').")
flags.DEFINE_string("export_dir", None, "With --mode=eval: evaluate this exported SavedModel "
                    "(e.g. WORKDIR/export) instead of the newest checkpoint.")
flags.mark_flag_as_required("workdir")


def summary_table(result, workdir):
  """A short human-readable summary of the last evaluation and the outputs."""
  rows = [("step", str(result["step"]))]
  rows += [(k, f"{v:.4f}") for k, v in result["metrics"].items() if k != "step"]
  width = max(len(k) for k, _ in rows)
  lines = ["", "=" * (width + 14), f"{'metric':<{width}}  value", "-" * (width + 14)]
  lines += [f"{k:<{width}}  {v}" for k, v in rows]
  lines += ["=" * (width + 14),
            f"TensorBoard:  tensorboard --logdir {workdir}",
            f"metrics:      {workdir}/metrics.jsonl",
            f"config:       {workdir}/config.gin",
            f"SavedModel:   {result['export'] or '(not exported in this mode)'}", ""]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if "://" in FLAGS.workdir:  # os.makedirs would silently create a local "gs:" folder.
    print(f"ERROR: --workdir={FLAGS.workdir} is not a local folder: checkpoints are written "
          "with atomic local renames, which object stores do not offer. Train into a local "
          "(or mounted) folder and copy it to the bucket, as launch/tpu_vm.sh does with "
          "`gcloud storage rsync`; TensorBoard reads the bucket directly.", file=sys.stderr)
    sys.exit(2)
  if not FLAGS["verbosity"].present:  # TF/absl INFO chatter hides the progress bar.
    logging.set_verbosity(logging.WARNING)
  # Imported here so --help is instant and configurables register before parsing.
  from keras_unc import config, train as train_lib  # pylint: disable=import-outside-toplevel
  params = list(FLAGS.gin_param)
  if FLAGS.strategy:
    params.append(f"get_strategy.name = '{FLAGS.strategy}'")
  if FLAGS.tpu:
    params.append(f"get_strategy.tpu = '{FLAGS.tpu}'")
  config.parse_or_exit(FLAGS.gin_file, params)
  if FLAGS.export_dir:
    if FLAGS["mode"].present and FLAGS.mode != "eval":
      print("ERROR: --export_dir evaluates a SavedModel: use it with --mode=eval.",
            file=sys.stderr)
      sys.exit(2)
    from keras_unc.evaluators import evaluate_export  # pylint: disable=import-outside-toplevel
    result = evaluate_export(FLAGS.export_dir, workdir=FLAGS.workdir)
  else:
    from keras_unc import preemption, workdir_lock  # pylint: disable=import-outside-toplevel
    try:
      result = train_lib.train(FLAGS.workdir, FLAGS.mode)
    except preemption.TrainingPreempted as e:
      print(f"PREEMPTED: {e}", file=sys.stderr, flush=True)
      sys.exit(preemption.EXIT_CODE)
    except workdir_lock.WorkdirLockedError as e:
      print(f"ERROR: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  print(summary_table(result, FLAGS.workdir), flush=True)


if __name__ == "__main__":
  app.run(main)
