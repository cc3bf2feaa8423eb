"""Distance awareness on two moons: the SNGP paper's Figure 1, through the one trainer.

Trains a deterministic and an SNGP residual MLP (`gin_configs/benchmarks/toy_2d_*.gin`: 6
blocks of 128 units, 1000 two-moons points) with `keras_unc.training.trainer.train`, then
scores each network's own `uncertainty` output (1 - max probability; SNGP: of the
mean-field predictive) on

* held-out two-moons points (in distribution, negatives), and
* points uniform on the annulus 3 <= |x - c| <= 6 around the training data's centre c
  (far from the data, positives),

and reports the AUROC of that score (far positive): a distance-aware model is near 1, a
plain softmax MLP, confident far from its decision boundary, near or below 0.5. The
uncertainty surface over a grid (training points and annulus drawn on top) is saved as
`WORKDIR/plots/toy_2d_uncertainty_step<steps>.png` and as a TensorBoard image summary in
`WORKDIR/plots_tb`.

  .venv/bin/python benchmarks/toy_2d.py [--steps 560] [--workdir DIR]
      [--gin_bindings "gp_head.kernel_scale = 2.0"]

Last line: {"sngp_far_auroc": ..., "deterministic_far_auroc": ..., "sngp_train_accuracy": ...,
"deterministic_train_accuracy": ..., "sngp_test_accuracy": ..., ..., "steps": ...,
"sngp_seconds": ..., "deterministic_seconds": ...}
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_unc import config
from keras_unc.data import get_source
from keras_unc.data.toy import annulus
from keras_unc.evaluators.runner import write_figures
from keras_unc.metrics.ood import ood_metrics
from keras_unc.training import trainer as train_lib

METHODS = ("deterministic", "sngp")
FAR_RADII = (3.0, 6.0)
NUM_FAR = 1000
GRID = 121  # Grid points per axis of the uncertainty surface.


def _predict(network, points):
  """The network's outputs for 2-D points `[N, 2]` (stored as `[N, 1, 1, 2]` images)."""
  out = network.predict(
    np.asarray(points, np.float32)[:, None, None, :], batch_size=1024, verbose=0
  )
  return {k: np.asarray(out[k]) for k in ("probs", "uncertainty")}


def run(name, workdir, steps=None, bindings=()):
  """Trains method `name` with `benchmarks/toy_2d_<name>.gin`; returns its network and cost."""
  gin.clear_config()
  keras.backend.clear_session()
  extra = [f"train.total_steps = {steps}"] if steps else []
  config.parse([f"benchmarks/toy_2d_{name}.gin"], [*extra, *bindings])
  start = time.perf_counter()
  result = train_lib.train(workdir, "train")
  return result["network"], result["step"], time.perf_counter() - start


def evaluate(network, source, center, seed=0):
  """Train/test accuracy and the far-vs-held-out AUROC of the network's uncertainty."""
  train_x, train_y = source.arrays("train")
  test_x, test_y = source.arrays("test")
  far = annulus(NUM_FAR, *FAR_RADII, center=center, seed=seed)
  train_out = _predict(network, train_x[:, 0, 0])
  test_out = _predict(network, test_x[:, 0, 0])
  far_out = _predict(network, far)
  return {
    "train_accuracy": float(np.mean(train_out["probs"].argmax(-1) == train_y)),
    "test_accuracy": float(np.mean(test_out["probs"].argmax(-1) == test_y)),
    "far_auroc": float(ood_metrics(test_out["uncertainty"], far_out["uncertainty"])["auroc"]),
    "mean_uncertainty_test": float(test_out["uncertainty"].mean()),
    "mean_uncertainty_far": float(far_out["uncertainty"].mean()),
  }


def surface_figure(surfaces, extent, train_x, train_y, center):
  """One panel per method: uncertainty over the grid, training points, the far annulus."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5.0 * len(surfaces), 4.4), dpi=100)
  FigureCanvasAgg(fig)
  angle = np.linspace(0, 2 * np.pi, 200)
  for i, (name, (values, auroc)) in enumerate(surfaces.items()):
    ax = fig.add_subplot(1, len(surfaces), i + 1)
    im = ax.imshow(values, origin="lower", extent=extent, cmap="viridis", vmin=0.0, vmax=0.5)
    for label, color in ((0, "#ff7f0e"), (1, "#1f77b4")):
      pts = train_x[train_y == label]
      ax.scatter(pts[:, 0], pts[:, 1], s=3, c=color, edgecolors="none")
    for r in FAR_RADII:
      ax.plot(center[0] + r * np.cos(angle), center[1] + r * np.sin(angle), "w--", lw=0.8)
    ax.set_title(f"{name}: 1 - max p (far AUROC {auroc:.3f})", fontsize=9)
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  return fig


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=None, help="override train.total_steps")
  parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument("--grid", type=int, default=GRID)
  args = parser.parse_args(argv)
  workdir = args.workdir or tempfile.mkdtemp(prefix="toy_2d_")
  found, surfaces = {}, {}
  for name in METHODS:
    network, steps, seconds = run(name, os.path.join(workdir, name), args.steps, args.gin_bindings)
    source = get_source("toy:two_moons")  # Sizes and seed as bound by the gin file.
    train_x, train_y = source.arrays("train")
    train_x = train_x[:, 0, 0]
    center = train_x.mean(0)
    found[name] = dict(evaluate(network, source, center), steps=steps, seconds=seconds)
    r = FAR_RADII[1] + 0.5
    extent = (center[0] - r, center[0] + r, center[1] - r, center[1] + r)
    xs, ys = np.linspace(*extent[:2], args.grid), np.linspace(*extent[2:], args.grid)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    values = _predict(network, grid)["uncertainty"].reshape(args.grid, args.grid)
    surfaces[name] = (values, found[name]["far_auroc"])
    print(f"  {name}: {found[name]}", flush=True)
  fig = surface_figure(surfaces, extent, train_x, train_y, center)
  writer = tf.summary.create_file_writer(os.path.join(workdir, "plots_tb"))
  (png,) = write_figures(workdir, writer, found["sngp"]["steps"], {"toy_2d/uncertainty": fig})

  print(f"\nTwo moons, {len(train_y)} training points; far = annulus {FAR_RADII} around the data")
  print(
    f"{'method':14s} {'steps':>6s} {'train acc':>9s} {'test acc':>9s} {'far AUROC':>9s} "
    f"{'unc test':>8s} {'unc far':>8s} {'seconds':>8s}"
  )
  for name, r in found.items():
    print(
      f"{name:14s} {r['steps']:6d} {r['train_accuracy']:9.4f} {r['test_accuracy']:9.4f} "
      f"{r['far_auroc']:9.4f} {r['mean_uncertainty_test']:8.4f} {r['mean_uncertainty_far']:8.4f} "
      f"{r['seconds']:8.1f}"
    )
  print(f"surface: {png}")
  out = {}
  for key in ("far_auroc", "train_accuracy", "test_accuracy", "steps", "seconds"):
    for name in ("sngp", "deterministic"):
      v = found[name][key]
      out[f"{name}_{key}"] = round(v, 4) if isinstance(v, float) else v
  out["png"] = png
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
