"""Evaluation figures drawn with matplotlib's Agg backend, returned as RGBA arrays.

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never `pyplot`, so
importing keras_unc neither changes the user's matplotlib backend nor needs a display.
Evaluators return figures from `figures(predict)`; `evaluators.runner` writes them to
`WORKDIR/plots/<name>_step<step>.png` and as TensorBoard image summaries.
"""

import os
import re

import numpy as np

from keras_unc.runtime import files


def _figure(width=4.0, height=4.0, dpi=100):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), dpi=dpi)
  FigureCanvasAgg(fig)
  return fig


def to_rgba(image):
  """A matplotlib figure or an image array as an `(H, W, 4)` uint8 RGBA array.

  Arrays may be `(H, W)` gray, `(H, W, 3)` RGB or `(H, W, 4)` RGBA, uint8 or floats in
  [0, 1].
  """
  if hasattr(image, "canvas"):  # A matplotlib figure.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = image.canvas
    if not isinstance(canvas, FigureCanvasAgg):
      canvas = FigureCanvasAgg(image)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)
  image = np.asarray(image)
  if np.issubdtype(image.dtype, np.floating):
    image = np.round(np.clip(image, 0.0, 1.0) * 255)
  image = image.astype(np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(
      f"A figure must be a matplotlib figure or an (H, W[, 1|3|4]) image "
      f"array, got shape {image.shape}."
    )
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.shape[-1] == 3:
    image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], -1)
  return image


def file_name(name, step):
  """`test/reliability` at step 40 -> `test_reliability_step40.png`."""
  safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "figure"
  return f"{safe}_step{int(step)}.png"


def save_png(rgba, path):
  """Writes an `(H, W, 4)` uint8 array as a PNG file (creating the folder)."""
  import tensorflow as tf

  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  # A figure is cheap to redraw: atomic (never half a PNG) but not fsynced.
  return files.write_bytes(path, tf.io.encode_png(to_rgba(rgba)).numpy(), fsync=False)


def reliability_diagram(bins, title="Reliability diagram"):
  """Bar chart of per-bin accuracy vs confidence (`metrics.calibration_bins` output)."""
  fig = _figure()
  ax = fig.add_subplot(1, 1, 1)
  edges = np.asarray(bins.edges)
  width = np.diff(edges)
  acc = np.nan_to_num(np.asarray(bins.accuracy, np.float64))
  conf = np.asarray(bins.confidence, np.float64)
  filled = np.asarray(bins.counts) > 0
  ax.bar(
    edges[:-1],
    acc,
    width=width,
    align="edge",
    color="tab:blue",
    edgecolor="black",
    linewidth=0.5,
    label="accuracy",
  )
  conf = np.where(filled, conf, acc)
  ax.bar(
    edges[:-1],
    np.abs(conf - acc),
    bottom=np.minimum(acc, conf),
    width=width,
    align="edge",
    facecolor=(1.0, 0.0, 0.0, 0.15),
    edgecolor="tab:red",
    hatch="//",
    linewidth=0.5,
    label="gap to confidence",
  )
  ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
  counts = np.asarray(bins.counts, np.float64)
  ece = float(np.sum(counts * np.abs(conf - acc)) / max(counts.sum(), 1.0))
  ax.set(
    xlim=(0, 1),
    ylim=(0, 1),
    xlabel="confidence",
    ylabel="accuracy",
    title=f"{title}\nECE = {ece:.4f}",
  )
  ax.legend(loc="upper left", fontsize="small")
  fig.tight_layout()
  return fig


def accuracy_coverage(coverage, accuracy, title="Accuracy-coverage curve"):
  """Accuracy of the most confident examples as a function of the fraction kept."""
  fig = _figure()
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(np.asarray(coverage), np.asarray(accuracy), color="tab:blue")
  ax.set(xlim=(0, 1), xlabel="coverage (fraction of examples kept)", ylabel="accuracy", title=title)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  return fig


def score_histogram(
  scores_in,
  scores_out,
  title="Uncertainty",
  label_in="in-distribution",
  label_out="out-of-distribution",
  bins=40,
):
  """Overlaid density histograms of a score on in- and out-of-distribution data."""
  fig = _figure()
  ax = fig.add_subplot(1, 1, 1)
  scores_in = np.asarray(scores_in, np.float64)
  scores_out = np.asarray(scores_out, np.float64)
  both = np.concatenate([scores_in, scores_out])
  both = both[np.isfinite(both)]
  lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
  if hi <= lo:
    lo, hi = lo - 0.5, hi + 0.5
  edges = np.linspace(lo, hi, bins + 1)
  for scores, label, color in (
    (scores_in, label_in, "tab:blue"),
    (scores_out, label_out, "tab:orange"),
  ):
    ax.hist(
      scores[np.isfinite(scores)],
      bins=edges,
      density=True,
      alpha=0.5,
      color=color,
      label=f"{label} (n={scores.size})",
    )
  ax.set(xlabel="score (higher = more uncertain)", ylabel="density", title=title)
  ax.legend(fontsize="small")
  fig.tight_layout()
  return fig
