"""How wide is the SWAG posterior of the methods benchmark, and why does SWAG not help there?

`benchmarks/methods.py` finds SWAG (Maddox et al. 2019) no better than the deterministic
model it starts from on over-fitted Fashion-MNIST. This measures the posterior it fits, one
training run per setting (same data, network, steps and seed as the methods benchmark):

  * `swag`: the benchmark row (cosine schedule, collection every epoch from 75 %: 5 models).
  * `swag_swa_lr`: swa_gaussian's learning-rate schedule (constant 0.5 x base while
    collecting), the row that tests "the cosine tail freezes the iterates".
  * `swag_swa_lr_every_step`: that schedule, collecting after every step (100 models, the
    deviation matrix full at K = 20), to see whether the number of models is the limit.

For each: the models collected; the relative width of the diagonal part `|sigma| / |theta_SWA|`
and of the low-rank part `|D| / sqrt(K - 1) / |theta_SWA|` (Frobenius norms over all trainable
weights); how far apart the S served samples are on the test set (mean fraction of test
images whose argmax differs from the sample mean's, and the mean total-variation distance of
a sample's predictive from the mean predictive); the training-set NLL of the served model
(near 0: the training set is memorised, gradients vanish, so the iterates SWAG collects barely
move whatever the learning rate); and test accuracy / NLL / ECE against the deterministic run
of the same seed, trained in the same process.

  .venv/bin/python benchmarks/swag_width.py [--seed 0] [--epochs 20] [--train_examples 2000]

The last line is one JSON object: {"seed": s, "settings": {"<name>": {"collected": n,
"rel_sigma": ..., "rel_lowrank": ..., "disagreement": ..., "tv": ..., "train_nll": ...,
"accuracy": ..., "nll": ..., "ece": ...}}, "deterministic": {...}}.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin
import keras
import numpy as np

import keras_unc
from benchmarks import methods as bench
from keras_unc import metrics
from keras_unc.evaluators import Predictor
from keras_unc.training import averaging, restore
from keras_unc.training import trainer as train_lib

SETTINGS = {
  "swag": ("swag", []),
  "swag_swa_lr": ("swag_swa_lr", []),
  "swag_swa_lr_every_step": ("swag_swa_lr", ["SWAG.collect_every = 1"]),
}


def _train(name, bindings, seed, args, workdir):
  _, settings = bench.settings_bindings(args)
  gin.clear_config()
  keras.backend.clear_session()
  keras_unc.configure([bench.gin_file(name)], [*settings, f"train.seed = {seed}", *bindings])
  return train_lib.train(workdir, "train_and_eval")


def posterior_width(state):
  """`(collected, |sigma| / |mean|, |D| / sqrt(K - 1) / |mean|)` of a SWAG state."""
  mean = np.concatenate([np.asarray(m, np.float64).ravel() for m in state.means])
  sq = np.concatenate([np.asarray(s, np.float64).ravel() for s in state.sq_means])
  collected = int(state.count.numpy())
  rank = min(collected, state.max_num_models)
  dev = np.concatenate(
    [np.asarray(d, np.float64)[:rank].reshape(rank, -1) for d in state.devs], axis=1
  )
  sigma = np.sqrt(np.maximum(sq - mean**2, state.var_clamp))
  norm = np.linalg.norm(mean)
  lowrank = np.linalg.norm(dev) / np.sqrt(state.max_num_models - 1)
  return collected, float(np.linalg.norm(sigma) / norm), float(lowrank / norm)


def sample_spread(served, split):
  """`(disagreement, tv)` of the served SWAG samples (`logits [B, S, C]`) on `split`."""
  found, _ = Predictor(served, 500)("fashion_mnist", split)
  logits = np.asarray(found["logits"], np.float64)
  z = logits - logits.max(-1, keepdims=True)
  per = np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # [B, S, C]
  mean = per.mean(1)
  disagree = (per.argmax(-1) != mean.argmax(-1)[:, None]).mean()
  tv = 0.5 * np.abs(per - mean[:, None]).sum(-1).mean()
  return float(disagree), float(tv)


def train_nll(network, args):
  found, labels = Predictor(network, 500)("fashion_mnist", f"train[:{args.train_examples}]")
  return float(metrics.nll(np.asarray(found["probs"]), np.asarray(labels)))


def _row(result):
  m = result["metrics"]
  return {"accuracy": m["test/accuracy"], "nll": m["test/nll"], "ece": m["test/ece"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--train_examples", type=int, default=2000)
  parser.add_argument("--batch_size", type=int, default=100)
  parser.add_argument("--eval_examples", type=int, default=10000)
  parser.add_argument("--settings", default=",".join(SETTINGS))
  args = parser.parse_args(argv)
  names = [n for n in args.settings.split(",") if n]
  bad = [n for n in names if n not in SETTINGS]
  if bad:
    raise SystemExit(f"Unknown setting(s) {bad}: choose from {', '.join(SETTINGS)}.")
  split = "test" if args.eval_examples >= 10000 else f"test[:{args.eval_examples}]"
  out = {}
  with tempfile.TemporaryDirectory() as root:
    det = _train("deterministic", [], args.seed, args, os.path.join(root, "det"))
    base = {**_row(det), "train_nll": train_nll(det["network"], args)}
    print(f"  deterministic: {base}", flush=True)
    for name in names:
      gin_name, bindings = SETTINGS[name]
      workdir = os.path.join(root, name)
      result = _train(gin_name, bindings, args.seed, args, workdir)
      raw, _, _ = restore.restore_network(workdir)
      collected, rel_sigma, rel_lowrank = posterior_width(averaging.of(raw))
      disagreement, tv = sample_spread(result["network"], split)
      out[name] = {
        "collected": collected,
        "rel_sigma": rel_sigma,
        "rel_lowrank": rel_lowrank,
        "disagreement": disagreement,
        "tv": tv,
        "train_nll": train_nll(result["network"], args),
        **_row(result),
      }
      print(f"  {name}: {out[name]}", flush=True)
  print(
    f"\nSWAG posterior width, seed {args.seed}, Fashion-MNIST first {args.train_examples} "
    f"images, {args.epochs} epochs"
  )
  head = "| setting | models | σ/θ | D/θ | disagree | TV | train NLL | acc | NLL | ECE |"
  print(head)
  print("|" + " --- |" * 10)
  print(
    f"| deterministic | – | – | – | – | – | {base['train_nll']:.4f} | {base['accuracy']:.4f} | "
    f"{base['nll']:.4f} | {base['ece']:.4f} |"
  )
  for name, r in out.items():
    print(
      f"| {name} | {r['collected']} | {r['rel_sigma']:.2e} | {r['rel_lowrank']:.2e} | "
      f"{r['disagreement']:.4f} | {r['tv']:.4f} | {r['train_nll']:.4f} | {r['accuracy']:.4f} | "
      f"{r['nll']:.4f} | {r['ece']:.4f} |"
    )
  print(json.dumps({"seed": args.seed, "settings": out, "deterministic": base}))


if __name__ == "__main__":
  main()
