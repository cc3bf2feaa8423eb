"""One evaluation round: every evaluator over a shared prediction cache, then reporting."""

import os

import tensorflow as tf

from keras_unc.evaluators.bootstrap import Bootstrap
from keras_unc.reporting import metrics_log, plots

PLOTS_DIR = "plots"


def write_figures(workdir, writer, step, figures):
  """Writes `{name: figure or RGBA array}` as `workdir/plots/<name>_step<step>.png` and as
  TensorBoard image summaries named `name`; returns the PNG paths.
  """
  paths = []
  with writer.as_default(step=step):
    for name, figure in figures.items():
      rgba = plots.to_rgba(figure)
      paths.append(
        plots.save_png(rgba, os.path.join(workdir, PLOTS_DIR, plots.file_name(name, step)))
      )
      tf.summary.image(name, rgba[None], step=step)
  writer.flush()
  return paths


def run_round(evaluators, predictor, workdir, writer, step, extra=None, bootstrap=None):
  """Runs `evaluators` at `step`; writes scalars to TensorBoard and `metrics.jsonl`, and
  the evaluators' figures (those with a `figures(predict)` method) as PNG files in
  `workdir/plots/` and TensorBoard images. `extra(metrics) -> dict` adds metrics to the
  same record (e.g. the `best_*` values of `keras_unc.runtime.best_checkpoint`).

  `bootstrap` (default `Bootstrap()`, gin `bootstrap.num_samples = 1000`; off with its
  default 0 samples) adds `<metric>/ci_low` and `<metric>/ci_high` for every metric the
  evaluators report, from the same cached predictions.

  Returns the dict of metrics written (empty when no evaluator reported anything).
  """
  predictor.reset()
  found = {}
  for evaluator in evaluators:
    found.update(evaluator.evaluate(predictor))
  figures = {}
  for evaluator in evaluators:
    if hasattr(evaluator, "figures"):
      figures.update(evaluator.figures(predictor) or {})
  if figures:
    write_figures(workdir, writer, step, figures)
  if not found:
    return {}
  bootstrap = Bootstrap() if bootstrap is None else bootstrap
  if bootstrap.num_samples > 0:
    found.update(bootstrap(evaluators, predictor, found))
  if extra is not None:
    found.update(extra(dict(found)) or {})
  return metrics_log.write_metrics(workdir, writer, step, found)
