"""Verbs `train`, `eval` and `export` (and `python -m keras_unc.main`): the one trainer.

    python -m keras_unc train  --gin_file=X.gin --workdir=DIR [--mode=train|train_and_eval]
    python -m keras_unc eval   --gin_file=X.gin --workdir=DIR [--export_dir=DIR/export]
    python -m keras_unc export --gin_file=X.gin --workdir=DIR

Parses gin files and bindings (later ones win), then runs `keras_unc.training.train`.
`--strategy` and `--tpu` are shortcuts for `get_strategy.name` / `get_strategy.tpu`.
"""

import sys

from absl import flags

from keras_unc.cli import flags as common

FLAGS = flags.FLAGS
MODES = ("train", "eval", "train_and_eval", "export")


def define_flags(mode="train_and_eval", modes=MODES):
  """The trainer's flags; `mode` is the verb's default, `modes` what `--mode` accepts."""
  common.define_gin_flags()
  common.define_workdir("Output folder: checkpoints, TensorBoard, metrics, export.")
  flags.DEFINE_enum("mode", mode, list(modes), "What to run.")
  flags.DEFINE_string("strategy", None, "auto | one_device | mirrored | multi_worker | tpu.")
  flags.DEFINE_string("tpu", None, "TPU name or address (Cloud TPU VM: 'local').")
  if "eval" in modes:
    flags.DEFINE_string(
      "export_dir",
      None,
      "With --mode=eval: evaluate this exported "
      "SavedModel (e.g. WORKDIR/export) instead of the newest checkpoint.",
    )


def summary_table(result, workdir):
  """A short human-readable summary of the last evaluation and the outputs.

  A metric with bootstrap intervals (`<m>/ci_low`, `<m>/ci_high`) is one row,
  `value [ci_low, ci_high]`.
  """
  found = result["metrics"]
  rows = [("step", str(result["step"]))]
  for k, v in found.items():
    if k == "step" or (k.endswith(("/ci_low", "/ci_high")) and k.rsplit("/", 1)[0] in found):
      continue
    low, high = found.get(f"{k}/ci_low"), found.get(f"{k}/ci_high")
    ci = f" [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
    rows.append((k, f"{v:.4f}{ci}"))
  width = max(len(k) for k, _ in rows)
  rule = width + 2 + max(12, *(len(v) for _, v in rows))
  lines = ["", "=" * rule, f"{'metric':<{width}}  value", "-" * rule]
  lines += [f"{k:<{width}}  {v}" for k, v in rows]
  lines += [
    "=" * rule,
    f"TensorBoard:  tensorboard --logdir {workdir}",
    f"metrics:      {workdir}/metrics.jsonl",
    f"config:       {workdir}/config.gin",
    f"SavedModel:   {result['export'] or '(not exported in this mode)'}",
    "",
  ]
  return "\n".join(lines)


def main(argv):
  if "://" in FLAGS.workdir:  # os.makedirs would silently create a local "gs:" folder.
    common.fail(
      f"--workdir={FLAGS.workdir} is not a local folder: checkpoints are written "
      "with atomic local renames, which object stores do not offer. Train into a "
      "local (or mounted) folder and copy it to the bucket, as launch/tpu_vm.sh "
      "does with `gcloud storage rsync`; TensorBoard reads the bucket directly."
    )
  params = []
  if FLAGS.strategy:
    params.append(f"get_strategy.name = '{FLAGS.strategy}'")
  if FLAGS.tpu:
    params.append(f"get_strategy.tpu = '{FLAGS.tpu}'")
  common.start(argv, params)
  from keras_unc import config
  from keras_unc.runtime import preemption, workdir_lock
  from keras_unc.training import trainer

  export_dir = FLAGS["export_dir"].value if "export_dir" in FLAGS else None
  if export_dir:
    if FLAGS["mode"].present and FLAGS.mode != "eval":
      common.fail("--export_dir evaluates a SavedModel: use it with --mode=eval.")
    from keras_unc.evaluators import evaluate_export

    evaluators = config.query("train.evaluators", ())  # Builds the @Evaluator()s.
    result = evaluate_export(
      export_dir,
      evaluators,
      workdir=FLAGS.workdir,
      batch_size=config.query("train.eval_batch_size", 512),
    )
  else:
    try:
      result = trainer.train(FLAGS.workdir, FLAGS.mode)
    except preemption.TrainingPreempted as e:
      print(f"PREEMPTED: {e}", file=sys.stderr, flush=True)
      sys.exit(preemption.EXIT_CODE)
    except workdir_lock.WorkdirLockedError as e:
      common.fail(str(e))
  print(summary_table(result, FLAGS.workdir), flush=True)
