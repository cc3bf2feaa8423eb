"""Active learning on real MNIST: labels needed by entropy/margin acquisition vs uniform.

Runs `keras_unc.active_learning` (gin_configs/active_learning/mnist.gin: quarter-width
ResNet-18 retrained from scratch each round, 20 class-balanced starting labels, a fixed
acquisition batch per round) once per strategy with the same seed, model and schedule, then
reads off, on each strategy's accuracy-vs-labels curve (linear interpolation between
rounds), the number of labels at which test accuracy first reaches the target. The default
target (`--target auto`) is the accuracy uniform sampling reaches with the whole label
budget (its last round): "how many labels does uncertainty sampling need to match random
sampling's final accuracy", fixed by the baseline alone, never by the curves compared.

    python benchmarks/active_learning.py [--target auto|0.85] [--rounds 8] [--workdir DIR]

Prints a table (labels and accuracy per round and strategy) and, as the last line, one JSON
object: `label_ratio` = labels needed by the best uncertainty strategy / by uniform (< 1:
uncertainty sampling needs fewer labels; null when a strategy never reaches the target).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402

from keras_unc import config  # noqa: E402
from keras_unc.active_learning import active_learning  # noqa: E402

BASELINE = "uniform"
UNCERTAINTY = ("entropy", "margin")


def labels_to_reach(labels, accuracies, target):
  """Labels at which the piecewise-linear accuracy curve first reaches `target` (None if
  it never does)."""
  points = list(zip(labels, accuracies))
  if points and points[0][1] >= target:
    return float(points[0][0])
  for (n0, a0), (n1, a1) in zip(points, points[1:]):
    if a1 >= target > a0:
      return n0 + (target - a0) * (n1 - n0) / (a1 - a0)
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--gin_file", default="active_learning/mnist.gin")
  parser.add_argument("--gin_param", action="append", default=[])
  parser.add_argument(
    "--target", default="auto", help="test accuracy to reach, or 'auto': uniform's final accuracy"
  )
  parser.add_argument("--rounds", type=int, default=None, help="override num_rounds")
  parser.add_argument("--strategies", default=",".join((BASELINE,) + UNCERTAINTY))
  parser.add_argument("--workdir", default=None, help="keep outputs here (resumable)")
  args = parser.parse_args()

  workdir = args.workdir or tempfile.mkdtemp(prefix="al_bench_")
  params = list(args.gin_param)
  if args.rounds:
    params.append(f"active_learning.num_rounds = {args.rounds}")
  strategies = args.strategies.split(",")
  curves, seconds = {}, {}
  for strategy in strategies:
    gin.clear_config()
    config.parse([args.gin_file], params + [f"active_learning.strategy = '{strategy}'"])
    start = time.perf_counter()
    records = active_learning(os.path.join(workdir, strategy))
    seconds[strategy] = time.perf_counter() - start
    curves[strategy] = ([r["num_labelled"] for r in records], [r["accuracy"] for r in records])
    print(f"{strategy}: {seconds[strategy]:.0f} s", flush=True)

  labels = curves[strategies[0]][0]
  if args.target == "auto":
    if BASELINE not in curves:
      raise SystemExit(f"--target auto needs the {BASELINE!r} strategy in --strategies.")
    target = curves[BASELINE][1][-1]
  else:
    target = float(args.target)
  print(
    f"\nMNIST test accuracy vs labelled-set size ({args.gin_file}; "
    f"target accuracy {target:.4f}{' = uniform final' if args.target == 'auto' else ''})"
  )
  print(" labels | " + " | ".join(f"{s:>8}" for s in strategies))
  print("--------+" + "+".join("-" * 10 for _ in strategies))
  for i, n in enumerate(labels):
    print(f"{n:>7} | " + " | ".join(f"{curves[s][1][i]:>8.4f}" for s in strategies))
  needed = {s: labels_to_reach(*curves[s], target) for s in strategies}
  print(
    " needed | "
    + " | ".join(
      f"{needed[s]:>8.1f}" if needed[s] is not None else f"{'never':>8}" for s in strategies
    )
  )

  base = needed.get(BASELINE)
  reached = {s: needed[s] for s in UNCERTAINTY if s in needed and needed[s] is not None}
  best = min(reached, key=reached.get) if reached else None
  ratio = (reached[best] / base) if (best and base) else None
  if not args.workdir:
    shutil.rmtree(workdir, ignore_errors=True)
  print(
    json.dumps(
      {
        "label_ratio": None if ratio is None else round(ratio, 4),
        "best_strategy": best,
        "target_accuracy": round(target, 4),
        "labels_needed": {s: None if v is None else round(v, 1) for s, v in needed.items()},
        "final_accuracy": {s: round(curves[s][1][-1], 4) for s in strategies},
        "labels": labels,
        "seconds": {s: round(v, 1) for s, v in seconds.items()},
      }
    )
  )


if __name__ == "__main__":
  main()
