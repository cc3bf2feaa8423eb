"""Post-hoc uncertainty on the methods benchmark's deterministic Fashion-MNIST model.

One run trains the deterministic model of `benchmarks/methods.py` (`benchmarks/fashion.gin`:
ResNet-18 x0.25 on the first 2,000 Fashion-MNIST training images, 20 epochs, over-confident
by design) for several seeds, then on the last 5,000 training images (never trained on, the
`calibrate.split` of that config) fits every post-hoc component of `keras_unc.posthoc`
through the same objects `python -m keras_unc calibrate` uses, and reports on the full
Fashion-MNIST test set (MNIST test as OOD):

  * ECE-15, adaptive ECE, NLL and accuracy before and after each calibrator (seed 0);
  * coverage, mean set size and size-stratified coverage violation of THR, APS (plain and
    randomised) and RAPS at alpha 0.1, on the temperature-calibrated predictive as the stage
    applies them (seed 0);
  * OOD AUROC and FPR95 of every detector (fitted on the 2,000 training images and the
    calibration split), and the in-distribution test fraction its `is_ood` threshold keeps
    (target 0.95);
  * the deep ensemble of the seeds (`keras_unc.training.ensemble`, exactly the `ensemble`
    verb's network) against its members: NLL, ECE, OOD AUROC (MSP).

Targets (issue 14), checked under the tables: temperature scaling removes at least half of
the ECE; each conformal method's test coverage within [0.89, 0.92]; the ensemble's NLL below
its best member's. Every comparison is within this run.

  .venv/bin/python benchmarks/posthoc.py [--seeds 3] [--alpha 0.1] [--epochs 20]

The last line is one JSON object: {"ece_before", "ece_<calibrator>", "nll_before",
"nll_<calibrator>", "coverage_<conformal>", "set_size_<conformal>", "ensemble_nll",
"member_nll_mean", "member_nll_best", "ensemble_ece", "member_ece_mean",
"ensemble_ood_auroc", "member_ood_auroc_mean", "ood_auroc": {detector: v}, "fpr95":
{detector: v}, "targets": {name: bool}, ...settings}.
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

from benchmarks import methods as bench
from keras_unc import config, metrics, posthoc
from keras_unc.cli import registry
from keras_unc.evaluators import Predictor
from keras_unc.evaluators.base import hard_labels
from keras_unc.training import calibrate as calibrate_lib
from keras_unc.training import ensemble as ensemble_lib
from keras_unc.training import trainer as train_lib

CALIBRATORS = ("temperature", "vector", "isotonic")
# The randomised variants allow empty sets: only then does the split-conformal upper bound
# (coverage <= 1 - alpha + 1/(n+1)) hold; the deterministic ones only guarantee >= 1 - alpha.
CONFORMAL = {
  "thr": {},
  "aps": {},
  "aps_randomized": {"randomized": True, "allow_empty": True},
  "raps": {},
  "raps_randomized": {"randomized": True, "allow_empty": True},
}
DETECTORS = (
  "msp",
  "max_logit",
  "energy",
  "gen",
  "vim",
  "knn",
  "react",
  "mahalanobis",
  "relative_mahalanobis",
)


def train_seed(seed, args, workdir):
  _, bindings = bench.settings_bindings(args)
  gin.clear_config()
  keras.backend.clear_session()
  config.parse(["benchmarks/fashion.gin"], [*bindings, f"train.seed = {seed}"])
  result = train_lib.train(workdir, "train_and_eval")
  return result


def predict_all(network, args):
  predictor = Predictor(network, 1000)
  test = "test" if args.eval_examples >= 10000 else f"test[:{args.eval_examples}]"
  found = {}
  for key, (dataset, split) in {
    "cal": ("fashion_mnist", args.cal_split),
    "test": ("fashion_mnist", test),
    "ood": ("mnist", test),
    "fit": ("fashion_mnist", f"train[:{args.train_examples}]"),
  }.items():
    outputs, labels = predictor(dataset, split)
    found[key] = (outputs, hard_labels(labels))
  return found


def calibration_rows(data):
  (cal, cal_y), (test, test_y) = data["cal"], data["test"]
  rows = {"before": test}
  for name in CALIBRATORS:
    c = posthoc.get("calibrator", name)().fit(posthoc.FitData(cal, cal_y))
    rows[name] = {**test, **c.apply(test)}
  out = {}
  for name, o in rows.items():
    p = o["probs"]
    out[name] = {
      "accuracy": metrics.accuracy(p, test_y),
      "nll": metrics.nll(p, test_y),
      "ece": metrics.expected_calibration_error(p, test_y, 15),
      "adaptive_ece": metrics.adaptive_calibration_error(p, test_y, 15),
    }
  return out


def conformal_rows(data, alpha):
  (cal, cal_y), (test, test_y) = data["cal"], data["test"]
  temperature = posthoc.get("calibrator", "temperature")().fit(posthoc.FitData(cal, cal_y))
  cal = {**cal, **temperature.apply(cal)}
  test = {**test, **temperature.apply(test)}
  out = {}
  for key, kwargs in CONFORMAL.items():
    name = key.split("_")[0]
    c = posthoc.get("conformal", name)(alpha=alpha, **kwargs).fit(posthoc.FitData(cal, cal_y))
    sets = c.apply(test)["prediction_set"]
    out[key] = {
      "coverage": metrics.coverage(sets, test_y),
      "set_size": metrics.mean_set_size(sets),
      "sscv": metrics.sscv(sets, test_y, alpha),
    }
  return out


def detector_rows(data, head):
  (cal, cal_y), (test, _), (ood, _), (fit, fit_y) = (data[k] for k in ("cal", "test", "ood", "fit"))
  out = {}
  for name in DETECTORS:
    d = posthoc.get("detector", name)().fit(posthoc.FitData(cal, cal_y, fit, fit_y, head))
    inside, outside = d.apply(test), d.apply(ood)
    found = metrics.ood_metrics(inside["ood_score"], outside["ood_score"])
    out[name] = {
      "auroc": found["auroc"],
      "fpr95": found["fpr95"],
      "id_kept": float(1.0 - np.mean(inside["is_ood"])),
      "ood_flagged": float(np.mean(outside["is_ood"])),
    }
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--alpha", type=float, default=0.1)
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--train_examples", type=int, default=2000)
  parser.add_argument("--batch_size", type=int, default=100)
  parser.add_argument("--eval_examples", type=int, default=10000)
  parser.add_argument("--cal_split", default="train[55000:]")
  args = parser.parse_args(argv)
  registry.register_configurables()
  start = time.perf_counter()
  members = []
  with tempfile.TemporaryDirectory() as root:
    workdirs = []
    for seed in range(args.seeds):
      workdir = os.path.join(root, f"seed{seed}")
      result = train_seed(seed, args, workdir)
      m = result["metrics"]
      members.append(
        {
          "nll": m["test/nll"],
          "ece": m["test/ece"],
          "accuracy": m["test/accuracy"],
          "ood_auroc": m["ood_mnist/auroc_msp"],
        }
      )
      print(f"  seed {seed}: { ({k: round(v, 4) for k, v in members[-1].items()}) }", flush=True)
      workdirs.append(workdir)
      if seed == 0:
        network = result["network"]
        data = predict_all(network, args)
        cal_rows = calibration_rows(data)
        conf_rows = conformal_rows(data, args.alpha)
        det_rows = detector_rows(data, calibrate_lib.linear_head(network))
    ens = ensemble_lib.build_ensemble(workdirs, os.path.join(root, "ensemble"), export=False)
  em = ens["metrics"]
  ensemble_row = {
    "nll": em["test/nll"],
    "ece": em["test/ece"],
    "accuracy": em["test/accuracy"],
    "ood_auroc": em["ood_mnist/auroc_msp"],
  }
  wall = time.perf_counter() - start

  print(
    f"\nFashion-MNIST (first {args.train_examples} training images, {args.epochs} epochs), "
    f"calibration split {args.cal_split}, {os.cpu_count()} CPU cores, {wall / 60:.1f} min"
  )
  print(f"\n{'calibrator':14s} {'acc':>7s} {'NLL':>7s} {'ECE':>7s} {'adaECE':>7s}")
  for name, r in cal_rows.items():
    print(
      f"{name:14s} {r['accuracy']:7.4f} {r['nll']:7.4f} {r['ece']:7.4f} {r['adaptive_ece']:7.4f}"
    )
  print(f"\n{'conformal':14s} {'coverage':>8s} {'size':>6s} {'SSCV':>6s}   (alpha {args.alpha})")
  for name, r in conf_rows.items():
    print(f"{name:14s} {r['coverage']:8.4f} {r['set_size']:6.3f} {r['sscv']:6.3f}")
  print(f"\n{'detector':20s} {'AUROC':>7s} {'FPR95':>7s} {'ID kept':>8s} {'OOD flagged':>11s}")
  for name, r in det_rows.items():
    print(
      f"{name:20s} {r['auroc']:7.4f} {r['fpr95']:7.4f} {r['id_kept']:8.4f} {r['ood_flagged']:11.4f}"
    )
  print(f"\n{'model':14s} {'acc':>7s} {'NLL':>7s} {'ECE':>7s} {'AUROC':>7s}")
  for i, r in enumerate(members):
    print(
      f"{'seed ' + str(i):14s} {r['accuracy']:7.4f} {r['nll']:7.4f} {r['ece']:7.4f} "
      f"{r['ood_auroc']:7.4f}"
    )
  print(
    f"{'ensemble':14s} {ensemble_row['accuracy']:7.4f} {ensemble_row['nll']:7.4f} "
    f"{ensemble_row['ece']:7.4f} {ensemble_row['ood_auroc']:7.4f}"
  )

  lo, hi = 1 - args.alpha - 0.01, 1 - args.alpha + 0.02
  targets = {
    "temperature_halves_ece": cal_rows["temperature"]["ece"] <= 0.5 * cal_rows["before"]["ece"],
    **{
      f"coverage_{k}_in_[{lo:.2f},{hi:.2f}]": lo <= r["coverage"] <= hi
      for k, r in conf_rows.items()
    },
    "ensemble_nll_below_best_member": ensemble_row["nll"] < min(r["nll"] for r in members),
  }
  for name, ok in targets.items():
    print(f"{'PASS' if ok else 'FAIL'}  {name}")
  summary = {
    **{f"ece_{k}": round(r["ece"], 4) for k, r in cal_rows.items()},
    **{f"nll_{k}": round(r["nll"], 4) for k, r in cal_rows.items()},
    **{f"coverage_{k}": round(r["coverage"], 4) for k, r in conf_rows.items()},
    **{f"set_size_{k}": round(r["set_size"], 3) for k, r in conf_rows.items()},
    "ensemble_nll": round(ensemble_row["nll"], 4),
    "member_nll_mean": round(float(np.mean([r["nll"] for r in members])), 4),
    "member_nll_best": round(min(r["nll"] for r in members), 4),
    "ensemble_ece": round(ensemble_row["ece"], 4),
    "member_ece_mean": round(float(np.mean([r["ece"] for r in members])), 4),
    "ensemble_ood_auroc": round(ensemble_row["ood_auroc"], 4),
    "member_ood_auroc_mean": round(float(np.mean([r["ood_auroc"] for r in members])), 4),
    "ood_auroc": {k: round(r["auroc"], 4) for k, r in det_rows.items()},
    "fpr95": {k: round(r["fpr95"], 4) for k, r in det_rows.items()},
    "id_kept": {k: round(r["id_kept"], 4) for k, r in det_rows.items()},
    "targets": {k: bool(v) for k, v in targets.items()},
    "alpha": args.alpha,
    "seeds": args.seeds,
    "cal_split": args.cal_split,
    "train_examples": args.train_examples,
    "epochs": args.epochs,
    "cpu_count": os.cpu_count(),
    "wall_s": round(wall, 1),
  }
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
