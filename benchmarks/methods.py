"""Every uncertainty method on Fashion-MNIST, MNIST as OOD: quality, cost, the papers' claims.

Each registered classification method trains with `gin_configs/benchmarks/fashion_<method>.gin`
(`benchmarks/fashion.gin` + `methods/<method>.gin` at the method's defaults) through the one
trainer, for several seeds, then reports mean and std over seeds of test accuracy, NLL, ECE
(15 bins), Brier, OOD AUROC on MNIST test (OOD positive) of the method's own uncertainty and
of 1 - max p (MSP), the median train-step time relative to deterministic (same seed, same
process) and the forward-FLOP ratio (TF profiler, batch 1). Under the table it checks the
papers' claims (PASS/FAIL): SNGP has lower ECE and higher OOD AUROC than deterministic;
BatchEnsemble, the shallow ensemble and Plex lower NLL; heteroscedastic NLL no higher; no
method's accuracy more than 1 point below deterministic; no method's ECE above
max(2 x deterministic's, 0.03); and for the methods of issue 15: MIMO and Packed-Ensembles
recover at least half of the deep ensemble's NLL gain over deterministic at a forward-FLOP
ratio <= 1.5 ("ensemble-like NLL at about one forward pass"), SWAG and Laplace have lower
NLL and ECE than deterministic (also with swa_gaussian's learning-rate schedule,
`swag_swa_lr`), rank-1, backbone MC dropout and SWA (both schedules) lower NLL, LogitNorm and
outlier exposure higher OOD AUROC, focal loss lower ECE. The comparisons use the means over
seeds, no tolerance. The `deep_ensemble` row is a baseline, not a trained method: the mean
predictive of the deterministic networks of all seeds (M = seeds; needs >= 2 seeds).
Every method gets the same data, network, optimizer and step budget; nothing is tuned
per method.

Settings and why (the whole run, 10 methods x 3 seeds, must fit in about 50 min on 2 idle
CPU cores). Measured on 2 idle cores: deterministic 84 ms per step of 100 and ~22 s per run
for graph building, evaluation and FLOP counting; the other methods cost 1-1.4x per step
(sngp, hetsngp, heteroscedastic, hetxl, mc_dropout, shallow_ensemble), ~1.7x (plex) and
~3.5-4x (batchensemble, be_sngp: 4 members on the tiled batch), ~17x deterministic in all
per seed: ~14 min per seed, ~43 min for 3 seeds. The 16 rows of issue 15 (new methods,
variants and loss options) add ~35 min for 3 seeds on 2 idle cores (rank-1 ~100 s a run,
SWAG ~60-70 s: S = 10 samples, each with its BatchNorm statistics recomputed).
  * Network: ResNet-18 v1.5 at quarter width (16-128 channels) with the ImageNet stem
    (stride 4): the MNIST demo's network at half its width (on CPU a step costs ~0.7x the
    half-width one per image; small convolutions are overhead-bound), far more than
    enough to memorise the training set.
  * Training set: the first 2,000 Fashion-MNIST training images (class-balanced), no
    augmentation, batch 100 (20 steps an epoch), 20 epochs (400 steps), AdamW 2e-3 with
    warmup and cosine decay (the demo's optimizer). The training loss goes to ~0: the
    deterministic network ends over-confident on the test set (accuracy ~0.81, ECE ~0.1
    against 0.006 on the MNIST demo), the regime the uncertainty papers study, at a small
    fraction of the cost of the 60k set. The GP methods reset their precision every epoch,
    as the SNGP recipes do.
  * Evaluation: the full Fashion-MNIST test set (10k) and MNIST test (10k) as OOD: one
    forward pass over 20k images per run, a few seconds next to the training.
  * `url` is skipped: it is a representation-learning method (an uncertainty module on an
    embedding trained by a ranking loss, evaluated by retrieval on downstream sets), not a
    classifier with a predictive distribution, so accuracy / NLL / ECE do not apply.

  .venv/bin/python benchmarks/methods.py [--seeds 3] [--methods sngp,batchensemble]
      [--epochs 20] [--train_examples 2000] [--batch_size 100] [--eval_examples 10000]
      [--gin_binding 'resnet.width = 0.5']...

Deterministic always runs (every ratio and claim is relative to it). The last line is one
JSON object: {"dataset": "fashion_mnist", "ood_dataset": "mnist", "seeds": N, "methods":
{"<name>": {"accuracy": m, "accuracy_std": s, "nll": ..., "nll_std": ..., "ece": ...,
"brier": ..., "ood_auroc": ..., "ood_auroc_msp": ..., "step_time_ratio": ...,
"flop_ratio": ..., "wall_s": ..., "cpu_s": ...}}, "claims": {"<claim>": true | false}, ...settings}.
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

import keras_unc
from keras_unc import metrics
from keras_unc.evaluators import Predictor
from keras_unc.methods import METHODS as REGISTERED
from keras_unc.training import trainer as train_lib
from keras_unc.training.cost import forward_flops  # The one FLOP counter (also `plan`).

# Registered methods that are not classifiers with a predictive distribution.
SKIPPED = {"url": "representation method (retrieval/downstream metrics), no class probabilities"}
# Rows that are an option of a registered method (a loss, weight averaging, a placement),
# each with its own `gin_configs/benchmarks/fashion_<row>.gin`: row name -> what it is.
VARIANTS = {
  "mc_dropout_backbone": "MC dropout in every residual block (ub CIFAR: rate 0.1), S = 10",
  "logitnorm": "deterministic trained with LogitNorm (tau = 0.04)",
  "focal": "deterministic trained with the focal loss (gamma = 3)",
  "outlier_exposure": "deterministic + outlier exposure (synthetic outliers, 2 per image)",
  "laplace_diag": "last-layer Laplace with the diagonal GGN (laplace: KFAC)",
  "laplace_mc": "last-layer Laplace (KFAC) with the Monte Carlo predictive, 100 samples",
  "swa": "deterministic + SWA (weight_averaging.kind='swa': mean every 5 steps from 75 %)",
  "ema": "deterministic + EMA of the weights (weight_averaging.kind='ema', 0.99, from 75 %)",
  "swag_swa_lr": "swag with swa_gaussian's schedule: base rate to step 150, linear to 0.5 x by step 270, constant after",
  "swa_swa_lr": "swa with swa_gaussian's schedule: base rate to step 150, linear to 0.5 x by step 270, constant after",
}
METHODS = (
  "deterministic",
  *sorted(n for n in REGISTERED if n not in {*SKIPPED, "deterministic"}),
  *sorted(VARIANTS),
)
METRICS = ("accuracy", "nll", "ece", "brier", "ood_auroc", "ood_auroc_msp", "step_time_ratio")
GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")
FULL_TRAIN = 60000
# The baseline row built from the deterministic runs of all seeds (not a trained method).
DEEP_ENSEMBLE = "deep_ensemble"


class ChunkTimer(keras.callbacks.Callback):
  """Wall time per optimizer step between batch-end callbacks, after a warmup."""

  def __init__(self, warmup):
    super().__init__()
    self.warmup, self.marks = warmup, []

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    if step >= self.warmup:
      self.marks.append((step, time.perf_counter()))

  def step_seconds(self):
    per = [
      (t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(self.marks, self.marks[1:]) if s1 > s0
    ]
    return float(np.median(per)) if per else float("nan")


def gin_file(name):
  """The benchmark config of method `name` (relative to gin_configs/); clear error if none."""
  rel = "benchmarks/fashion.gin" if name == "deterministic" else f"benchmarks/fashion_{name}.gin"
  if not os.path.exists(os.path.join(GIN_DIR, rel)):
    raise FileNotFoundError(
      f"Method {name!r} has no benchmark config gin_configs/{rel}: add one (include "
      f"'benchmarks/fashion.gin' and 'methods/{name}.gin'), or add it to SKIPPED in "
      "benchmarks/methods.py with the reason."
    )
  return rel


def settings_bindings(args):
  """Gin bindings of the data, budget and evaluation settings chosen on the command line."""
  steps_per_epoch = -(-args.train_examples // args.batch_size)
  steps = args.epochs * steps_per_epoch
  split = "train" if args.train_examples >= FULL_TRAIN else f"train[:{args.train_examples}]"
  test = "test" if args.eval_examples >= 10000 else f"test[:{args.eval_examples}]"
  return steps_per_epoch, [
    f"train.split = '{split}'",
    f"train.batch_size = {args.batch_size}",
    f"train.total_steps = {steps}",
    f"train.eval_every = {steps}",
    f"train.checkpoint_every = {steps}",
    f"train.steps_per_execution = {min(steps_per_epoch, steps)}",
    "train.verbose = 0",
    "train.export_at_end = False",
    f"ClassificationEvaluator.split = '{test}'",
    f"OODEvaluator.in_split = '{test}'",
    f"OODEvaluator.ood = {{'mnist': ('mnist', '{test}')}}",
  ]


def test_predictions(network, args):
  """`(probs_in, labels_in, probs_ood)`: the network's predictive on the benchmark's
  Fashion-MNIST test split and MNIST test split (the deep-ensemble baseline's inputs)."""
  split = "test" if args.eval_examples >= 10000 else f"test[:{args.eval_examples}]"
  predict = Predictor(network, 500)
  found_in, labels = predict("fashion_mnist", split)
  found_ood, _ = predict("mnist", split)
  return found_in["probs"], labels, found_ood["probs"]


def deep_ensemble_row(members):
  """The deep-ensemble baseline (Lakshminarayanan et al. 2017): the mean predictive of the
  deterministic runs of every seed, `members = [(probs_in, labels, probs_ood), ...]`.

  One ensemble of all the seeds, hence no spread over seeds (std 0). Its uncertainty is
  1 - max p of the mean, so both AUROC columns agree. Cost: M trainings and M forward
  passes, so `step_time_ratio` and `flop_ratio` are M (per-step cost of the M networks).
  """
  m = len(members)
  labels = members[0][1]
  probs = np.mean([p for p, _, _ in members], axis=0)
  ood = np.mean([o for _, _, o in members], axis=0)
  auroc = metrics.ood_metrics(1.0 - probs.max(-1), 1.0 - ood.max(-1))["auroc"]
  row = {
    "accuracy": metrics.accuracy(probs, labels),
    "nll": metrics.nll(probs, labels),
    "ece": metrics.expected_calibration_error(probs, labels, 15),
    "brier": metrics.brier_score(probs, labels),
    "ood_auroc": auroc,
    "ood_auroc_msp": auroc,
    "step_time_ratio": float(m),
  }
  out = {}
  for k in METRICS:
    out[k] = round(float(row[k]), 4)
    out[f"{k}_std"] = 0.0
  out["flop_ratio"] = float(m)
  return out


def run(name, seed, args, workdir, extra_bindings=(), flops=True):
  """Trains and evaluates one method with one seed; returns its metrics and costs (and,
  for deterministic, its test predictions for the deep-ensemble baseline)."""
  rel = gin_file(name)
  steps_per_epoch, bindings = settings_bindings(args)
  with open(os.path.join(GIN_DIR, rel)) as f:
    if "gp_head.reset_every" in f.read():  # Reset the GP precision every data epoch.
      bindings.append(f"gp_head.reset_every = {steps_per_epoch}")
  gin.clear_config()
  keras.backend.clear_session()
  # `configure` registers every configurable first (fashion.gin binds `calibrate.split`,
  # whose module the trainer imports only when calibrating).
  keras_unc.configure([rel], [*bindings, f"train.seed = {seed}", *extra_bindings])
  timer = ChunkTimer(args.warmup_epochs * steps_per_epoch)
  start, cpu = time.perf_counter(), time.process_time()
  result = train_lib.train(workdir, "train_and_eval", callbacks=[timer])
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu
  m = result["metrics"]
  network = result["network"]
  return {
    "accuracy": m["test/accuracy"],
    "nll": m["test/nll"],
    "ece": m["test/ece"],
    "brier": m["test/brier"],
    "ood_auroc": m["ood_mnist/auroc"],
    "ood_auroc_msp": m["ood_mnist/auroc_msp"],
    "step_s": timer.step_seconds(),
    "flops": forward_flops(network, tuple(network.inputs[0].shape[1:])) if flops else None,
    "wall_s": wall,
    "cpu_s": cpu,  # Process CPU time: a load-independent cost when other jobs share the CPU.
    "predictions": test_predictions(network, args) if name == "deterministic" else None,
  }


def network_name():
  """The backbone of the last run's gin config, e.g. "resnet18x0.5"."""
  try:
    depth, width = (gin.query_parameter(f"resnet.{k}") for k in ("depth", "width"))
  except ValueError:
    return str(gin.query_parameter("build_network.backbone"))
  return f"resnet{depth}x{width:g}"


def _std(values):
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(runs):
  """`{name: [per-seed run dicts]}` -> `{name: {metric: mean, metric_std: std, ...}}`.

  `step_time_ratio` is taken per seed against deterministic's run of the same seed;
  `flop_ratio` from the first seed's networks; `wall_s` and `cpu_s` are the mean wall and
  process CPU time of one run (training, evaluation and graph building).
  """
  base = runs["deterministic"]
  out = {}
  for name, seeds in runs.items():
    per = {k: [r[k] for r in seeds] for k in ("accuracy", "nll", "ece", "brier")}
    per["ood_auroc"] = [r["ood_auroc"] for r in seeds]
    per["ood_auroc_msp"] = [r["ood_auroc_msp"] for r in seeds]
    per["step_time_ratio"] = [r["step_s"] / b["step_s"] for r, b in zip(seeds, base)]
    row = {}
    for k in METRICS:
      row[k] = round(float(np.mean(per[k])), 4)
      row[f"{k}_std"] = round(_std(per[k]), 4)
    flops, base_flops = seeds[0]["flops"], base[0]["flops"]
    row["flop_ratio"] = round(flops / base_flops, 3) if flops and base_flops else None
    row["wall_s"] = round(float(np.mean([r["wall_s"] for r in seeds])), 1)
    row["cpu_s"] = round(float(np.mean([r["cpu_s"] for r in seeds])), 1)
    out[name] = row
  members = [r["predictions"] for r in base if r.get("predictions") is not None]
  if len(members) > 1:  # The seeds' deterministic networks as one deep ensemble.
    row = deep_ensemble_row(members)
    row["wall_s"] = round(float(np.sum([r["wall_s"] for r in base])), 1)
    row["cpu_s"] = round(float(np.sum([r["cpu_s"] for r in base])), 1)
    out[DEEP_ENSEMBLE] = row
  return out


def check_claims(out):
  """The papers' claims on the summary `out`: `{claim: (passed, detail)}`; a claim whose
  methods did not run is left out."""
  det = out["deterministic"]
  found = {}

  def fmt(name, key):
    return f"{name} {out[name][key]:.4f} vs deterministic {det[key]:.4f}"

  if "sngp" in out:
    s = out["sngp"]
    found["sngp_ece_below_deterministic"] = (s["ece"] < det["ece"], fmt("sngp", "ece"))
    found["sngp_ood_auroc_above_deterministic"] = (
      s["ood_auroc"] > det["ood_auroc"],
      fmt("sngp", "ood_auroc"),
    )
  for name in ("batchensemble", "shallow_ensemble", "plex"):
    if name in out:
      found[f"{name}_nll_below_deterministic"] = (
        out[name]["nll"] < det["nll"],
        fmt(name, "nll"),
      )
  if "heteroscedastic" in out:
    found["heteroscedastic_nll_not_above_deterministic"] = (
      out["heteroscedastic"]["nll"] <= det["nll"],
      fmt("heteroscedastic", "nll"),
    )
  ens = out.get(DEEP_ENSEMBLE)
  for name in ("mimo", "packed"):  # Havasi et al. 2021; Laurent et al. 2023.
    if name in out:
      o = out[name]
      gap = det["nll"] - ens["nll"] if ens else float("nan")
      closed = (det["nll"] - o["nll"]) / gap if ens and gap > 0 else float("nan")
      cheap = o["flop_ratio"] is not None and o["flop_ratio"] <= 1.5
      found[f"{name}_ensemble_like_nll_at_one_forward"] = (
        bool(ens) and closed >= 0.5 and cheap,
        f"{name} NLL {o['nll']:.4f}, deterministic {det['nll']:.4f}, deep ensemble "
        + (f"{ens['nll']:.4f}" if ens else "n/a (needs >= 2 seeds)")
        + f": {closed:.0%} of the ensemble's NLL gain (>= 50% asked); FLOP ratio "
        + (f"{o['flop_ratio']:.2f}" if o["flop_ratio"] is not None else "n/a")
        + " (<= 1.5 asked)",
      )
  for name in ("swag", "swag_swa_lr", "laplace"):  # Maddox et al. 2019; Daxberger et al. 2021.
    if name in out:
      o = out[name]
      found[f"{name}_nll_and_ece_below_deterministic"] = (
        o["nll"] < det["nll"] and o["ece"] < det["ece"],
        f"{fmt(name, 'nll')}; ECE {o['ece']:.4f} vs {det['ece']:.4f}",
      )
  for name in ("rank1", "mc_dropout_backbone", "swa", "swa_swa_lr"):
    if name in out:
      found[f"{name}_nll_below_deterministic"] = (out[name]["nll"] < det["nll"], fmt(name, "nll"))
  for name in ("logitnorm", "outlier_exposure"):  # Wei et al. 2022; Hendrycks et al. 2019.
    if name in out:
      found[f"{name}_ood_auroc_above_deterministic"] = (
        out[name]["ood_auroc"] > det["ood_auroc"],
        fmt(name, "ood_auroc"),
      )
  if "focal" in out:  # Mukhoti et al. 2020.
    found["focal_ece_below_deterministic"] = (out["focal"]["ece"] < det["ece"], fmt("focal", "ece"))
  others = [n for n in out if n not in ("deterministic", DEEP_ENSEMBLE)]
  if others:
    low = [n for n in others if out[n]["accuracy"] < det["accuracy"] - 0.01]
    found["accuracy_within_1pt_of_deterministic"] = (
      not low,
      f"below {det['accuracy'] - 0.01:.4f}: "
      + (", ".join(f"{n} {out[n]['accuracy']:.4f}" for n in low) or "none"),
    )
  bound = max(2 * det["ece"], 0.03)
  high = [n for n in out if n != DEEP_ENSEMBLE and out[n]["ece"] > bound]
  found["ece_at_most_max_2x_deterministic_or_0.03"] = (
    not high,
    f"bound {bound:.4f}, above: " + (", ".join(f"{n} {out[n]['ece']:.4f}" for n in high) or "none"),
  )
  return found


def print_table(out, claims, seeds):
  cols = ("accuracy", "nll", "ece", "brier", "ood_auroc", "ood_auroc_msp")
  heads = ("acc", "NLL", "ECE", "Brier", "AUROC own", "AUROC MSP")
  print(
    f"{'method':17s} "
    + " ".join(f"{h:>15s}" for h in heads)
    + f" {'step x':>12s} {'FLOP x':>7s} {'run s':>6s}"
  )
  for name, o in out.items():
    cells = " ".join(f"{o[k]:7.4f}±{o[k + '_std']:<7.4f}" for k in cols)
    flop = f"{o['flop_ratio']:7.3f}" if o["flop_ratio"] is not None else f"{'-':>7s}"
    step = f"{o['step_time_ratio']:5.2f}±{o['step_time_ratio_std']:<6.2f}"
    print(f"{name:17s} {cells} {step} {flop} {o['wall_s']:6.0f}")
  print(f"(mean ± std over {seeds} seed(s); AUROC: MNIST test as OOD, OOD positive)")
  for claim, (passed, detail) in claims.items():
    print(f"{'PASS' if passed else 'FAIL'}  {claim}: {detail}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--train_examples", type=int, default=2000)
  parser.add_argument("--batch_size", type=int, default=100)
  parser.add_argument("--eval_examples", type=int, default=10000)
  parser.add_argument("--warmup_epochs", type=int, default=2, help="epochs left out of timing")
  parser.add_argument(
    "--gin_binding", action="append", default=[], help="extra gin binding of every run"
  )
  args = parser.parse_args(argv)
  asked = [n for n in args.methods.split(",") if n]
  bad = [n for n in asked if n not in METHODS]
  if bad:
    why = "; ".join(f"{n}: {SKIPPED[n]}" for n in bad if n in SKIPPED)
    raise SystemExit(
      f"Unknown or skipped method(s) {bad}: choose from {', '.join(METHODS)}"
      + (f" (skipped: {why})" if why else "")
      + "."
    )
  names = ["deterministic"] + [n for n in asked if n != "deterministic"]
  for name in names:
    gin_file(name)  # Fail before training anything.
  runs = {name: [] for name in names}
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as root:
    for seed in range(args.seeds):  # Seed-major: an interrupted run still has every method.
      for name in names:
        workdir = os.path.join(root, f"{name}_{seed}")
        r = run(name, seed, args, workdir, args.gin_binding, flops=seed == 0)
        runs[name].append(r)
        shown = {k: round(v, 4) for k, v in r.items() if isinstance(v, float | int)}
        print(f"  seed {seed} {name}: {shown}", flush=True)
  wall = time.perf_counter() - start
  out = summarize(runs)
  claims = check_claims(out)
  steps_per_epoch, _ = settings_bindings(args)
  print(
    f"\nFashion-MNIST, first {args.train_examples} training images, {args.epochs} epochs "
    f"of {steps_per_epoch} steps of {args.batch_size}; {os.cpu_count()} CPU cores; "
    f"{wall / 60:.1f} min in all"
  )
  print_table(out, claims, args.seeds)
  print(
    json.dumps(
      {
        "dataset": "fashion_mnist",
        "ood_dataset": "mnist",
        "seeds": args.seeds,
        "methods": out,
        "claims": {k: bool(v[0]) for k, v in claims.items()},
        "skipped": SKIPPED,
        "train_examples": args.train_examples,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps": args.epochs * steps_per_epoch,
        "eval_examples": args.eval_examples,
        "network": network_name(),
        "cpu_count": os.cpu_count(),
        "wall_s": round(wall, 1),
      }
    )
  )


if __name__ == "__main__":
  main()
