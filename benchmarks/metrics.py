"""Speed of the exact metrics and of the OOD evaluator, each against a reference.

1. Exact `keras_unc.metrics.auroc` vs `sklearn.metrics.roc_auc_score` on the same
   10^7 random scores (same process, best of `--repeats`; target ratio <= 1).
2. `expected_calibration_error` on 10^7 examples x 10 classes (float32 probs).
3. `OODEvaluator(mnist test vs fashion_mnist test)` through `Predictor(network, 512)`
   vs a bare `network.predict` on the same 20k images (held in memory), for a small
   deterministic ResNet-18 (width 0.25, CIFAR stem) on 28x28x1 inputs. Both are timed
   warm (best of two runs after a first one: datasets built, functions traced). The
   evaluator computes the OOD scores that need no extra data (uncertainty, msp,
   entropy, max_logit; Mahalanobis would add a pass over the 60k train images).
   "ood_eval_vs_predict" is the evaluator's throughput relative to predict
   (= predict seconds / evaluator seconds; 1.0 = no overhead).

  .venv/bin/python benchmarks/metrics.py [--n 10000000]

Last line: {"auroc_time_ratio_vs_sklearn": ..., "ece_seconds": ..., "ood_eval_vs_predict": ...}
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from sklearn.metrics import roc_auc_score

from keras_unc import metrics


def best_time(fn, repeats):
  times, value = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    value = fn()
    times.append(time.perf_counter() - start)
  return min(times), value


def bench_auroc(n, repeats):
  rng = np.random.default_rng(0)
  positives = rng.random(n) < 0.3
  scores = rng.normal(size=n) + positives
  ours_s, ours = best_time(lambda: metrics.auroc(scores, positives), repeats)
  sk_s, sk = best_time(lambda: roc_auc_score(positives, scores), repeats)
  assert abs(ours - sk) < 1e-9, (ours, sk)
  return ours_s, sk_s, ours


def bench_ece(n, num_classes, repeats):
  rng = np.random.default_rng(1)
  probs = rng.normal(scale=2.0, size=(n, num_classes)).astype(np.float32)
  probs -= probs.max(axis=1, keepdims=True)
  np.exp(probs, out=probs)
  probs /= probs.sum(axis=1, keepdims=True)
  labels = rng.integers(0, num_classes, size=n)
  return best_time(lambda: metrics.expected_calibration_error(probs, labels), repeats)


def bench_ood(batch_size):
  import keras

  from keras_unc.backbones import resnet
  from keras_unc.data import get_source
  from keras_unc.evaluators import OODEvaluator, Predictor
  from keras_unc.methods.deterministic import Deterministic
  from keras_unc.training.network import build_network

  keras.utils.set_random_seed(0)
  network = build_network(
    Deterministic(head_init="glorot_uniform"),
    10,
    (28, 28, 1),
    backbone=lambda **kw: resnet(18, width=0.25, stem="cifar", **kw),
    image_size=28,
    num_channels=1,
  )
  images = np.concatenate(
    [get_source("mnist").arrays("test")[0], get_source("fashion_mnist").arrays("test")[0]]
  ).astype(np.float32)

  def bare():
    return network.predict(images, batch_size=batch_size, verbose=0)

  # Scores computed from the 20k predictions only (the Mahalanobis scores would
  # add a 60k-image pass over the train split).
  evaluator = OODEvaluator(
    in_dataset="mnist",
    in_split="test",
    ood={"fashion_mnist": ("fashion_mnist", "test")},
    scores=("uncertainty", "msp", "entropy", "max_logit"),
    plot=False,
  )
  predictor = Predictor(network, batch_size)

  def evaluate():
    predictor.reset()
    return evaluator.evaluate(predictor)

  cold_predict, _ = best_time(bare, 1)
  cold_eval, _ = best_time(evaluate, 1)
  predict_s, _ = best_time(bare, 2)
  eval_s, result = best_time(evaluate, 2)
  return {
    "images": len(images),
    "predict_s": predict_s,
    "eval_s": eval_s,
    "cold_predict_s": cold_predict,
    "cold_eval_s": cold_eval,
    "result": result,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=10_000_000, help="examples for AUROC / ECE")
  parser.add_argument("--repeats", type=int, default=2, help="best-of repeats (metrics)")
  parser.add_argument("--batch", type=int, default=512, help="evaluation batch size")
  args = parser.parse_args()

  ours_s, sk_s, auc = bench_auroc(args.n, args.repeats)
  ece_s, ece = bench_ece(args.n, 10, args.repeats)
  ood = bench_ood(args.batch)
  ratio = ood["predict_s"] / ood["eval_s"]

  print(f"\n{os.cpu_count()} CPU cores, N = {args.n:,}, best of {args.repeats}")
  print(f"{'measurement':<46}{'seconds':>10}")
  print(f"{'keras_unc.metrics.auroc':<46}{ours_s:>10.3f}")
  print(f"{'sklearn roc_auc_score':<46}{sk_s:>10.3f}")
  print(f"{'  ratio ours / sklearn (AUROC ' + f'{auc:.4f})':<46}{ours_s / sk_s:>10.3f}")
  print(f"{'expected_calibration_error (10 classes)':<46}{ece_s:>10.3f}")
  print(
    f"\nOOD evaluation, {ood['images']:,} images (mnist + fashion_mnist test), "
    f"batch {args.batch}, ResNet-18 w0.25"
  )
  print(f"{'bare network.predict (warm)':<46}{ood['predict_s']:>10.3f}")
  print(f"{'OODEvaluator + Predictor (warm)':<46}{ood['eval_s']:>10.3f}")
  print(f"{'bare network.predict (cold, first call)':<46}{ood['cold_predict_s']:>10.3f}")
  print(f"{'OODEvaluator + Predictor (cold, first call)':<46}{ood['cold_eval_s']:>10.3f}")
  print(f"{'  evaluator throughput / predict throughput':<46}{ratio:>10.3f}")
  print("  metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(ood["result"].items())))
  print(
    json.dumps(
      {
        "auroc_time_ratio_vs_sklearn": round(ours_s / sk_s, 4),
        "ece_seconds": round(ece_s, 4),
        "ood_eval_vs_predict": round(ratio, 4),
      }
    )
  )


if __name__ == "__main__":
  main()
