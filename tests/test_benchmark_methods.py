"""benchmarks/methods.py: the summary over seeds, the claims, and its plumbing end to end."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "methods.py"
)
_spec = importlib.util.spec_from_file_location("methods_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _run(acc, nll, ece, auroc, step_s, flops=100, brier=0.2, msp=0.8):
  return {
    "accuracy": acc,
    "nll": nll,
    "ece": ece,
    "brier": brier,
    "ood_auroc": auroc,
    "ood_auroc_msp": msp,
    "step_s": step_s,
    "flops": flops,
    "wall_s": 10.0,
    "cpu_s": 12.0,
  }


def test_every_registered_classification_method_has_a_config():
  assert "url" not in bench.METHODS and "url" in bench.SKIPPED
  assert bench.METHODS[0] == "deterministic" and len(bench.METHODS) >= 10
  for name in bench.METHODS:
    assert os.path.exists(os.path.join(bench.GIN_DIR, bench.gin_file(name)))


def test_missing_config_names_the_file_to_add():
  with pytest.raises(FileNotFoundError, match="benchmarks/fashion_nope.gin"):
    bench.gin_file("nope")


def test_summary_is_mean_and_sample_std_with_same_seed_step_ratios():
  runs = {
    "deterministic": [_run(0.90, 0.50, 0.04, 0.80, 1.0), _run(0.92, 0.40, 0.06, 0.90, 2.0)],
    "sngp": [
      _run(0.91, 0.30, 0.01, 0.95, 3.0, flops=150),
      _run(0.89, 0.30, 0.03, 0.97, 2.0, flops=999),
    ],
  }
  out = bench.summarize(runs)
  assert out["deterministic"]["accuracy"] == pytest.approx(0.91)
  assert out["deterministic"]["accuracy_std"] == pytest.approx(math.sqrt(2) * 0.01, abs=1e-4)
  # Ratios per seed against deterministic's run of the same seed: 3/1 and 2/2.
  assert out["sngp"]["step_time_ratio"] == pytest.approx(2.0)
  assert out["sngp"]["step_time_ratio_std"] == pytest.approx(math.sqrt(2), abs=1e-4)
  assert out["sngp"]["flop_ratio"] == pytest.approx(1.5)  # First seed's networks.
  assert out["deterministic"]["step_time_ratio"] == 1.0


def test_claims_pass_and_fail_on_the_means():
  det = _run(0.90, 0.50, 0.05, 0.80, 1.0)
  runs = {
    "deterministic": [det],
    "sngp": [_run(0.90, 0.45, 0.02, 0.85, 1.0)],  # Better ECE and AUROC: both pass.
    "batchensemble": [_run(0.91, 0.55, 0.04, 0.80, 1.0)],  # Worse NLL: fails.
    "heteroscedastic": [_run(0.87, 0.50, 0.11, 0.80, 1.0)],  # Equal NLL passes; acc, ECE fail.
  }
  claims = bench.check_claims(bench.summarize(runs))
  passed = {k: v[0] for k, v in claims.items()}
  assert passed == {
    "sngp_ece_below_deterministic": True,
    "sngp_ood_auroc_above_deterministic": True,
    "batchensemble_nll_below_deterministic": False,
    "heteroscedastic_nll_not_above_deterministic": True,
    "accuracy_within_1pt_of_deterministic": False,
    "ece_at_most_max_2x_deterministic_or_0.03": False,
  }
  assert "heteroscedastic 0.8700" in claims["accuracy_within_1pt_of_deterministic"][1]
  # The ECE bound is max(2 x 0.05, 0.03) = 0.1: 0.11 is above it, 0.04 and 0.02 are not.
  assert claims["ece_at_most_max_2x_deterministic_or_0.03"][1] == (
    "bound 0.1000, above: heteroscedastic 0.1100"
  )


def test_unknown_or_skipped_method_is_refused():
  with pytest.raises(SystemExit, match="url: representation method"):
    bench.main(["--methods", "url"])


def test_plumbing_end_to_end_prints_table_claims_and_json(capsys):
  # Two methods (one with a GP head, whose precision reset follows the epoch length), one
  # seed, 4 steps of a 1/16-width ResNet-18, 64 test and OOD images.
  bench.main(
    [
      "--methods=sngp",
      "--seeds=1",
      "--epochs=2",
      "--train_examples=50",
      "--batch_size=25",
      "--eval_examples=64",
      "--warmup_epochs=0",
      "--gin_binding=resnet.width = 0.0625",
    ]
  )
  lines = capsys.readouterr().out.strip().splitlines()
  found = json.loads(lines[-1])
  assert found["dataset"] == "fashion_mnist" and found["seeds"] == 1
  assert found["steps"] == 4 and found["network"] == "resnet18x0.0625"
  assert set(found["methods"]) == {"deterministic", "sngp"}
  for row in found["methods"].values():
    for key in ("accuracy", "nll", "ece", "brier", "ood_auroc", "ood_auroc_msp"):
      assert math.isfinite(row[key]) and f"{key}_std" in row
    assert row["step_time_ratio"] > 0 and row["flop_ratio"] > 0
  assert found["methods"]["deterministic"]["flop_ratio"] == 1.0
  assert "sngp_ece_below_deterministic" in found["claims"]
  assert any(line.startswith(("PASS", "FAIL")) for line in lines)


def test_deep_ensemble_row_is_the_mean_predictive_checked_with_sklearn():
  from sklearn.metrics import log_loss, roc_auc_score

  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 50)
  members = []
  for _ in range(3):
    p_in = rng.dirichlet(np.ones(4), 50)
    p_ood = rng.dirichlet(np.ones(4) * 3.0, 40)
    members.append((p_in, labels, p_ood))
  row = bench.deep_ensemble_row(members)
  mean_in = np.mean([m[0] for m in members], axis=0)
  mean_ood = np.mean([m[2] for m in members], axis=0)
  assert row["accuracy"] == pytest.approx(np.mean(mean_in.argmax(-1) == labels), abs=1e-4)
  assert row["nll"] == pytest.approx(log_loss(labels, mean_in, labels=range(4)), abs=1e-4)
  assert row["brier"] == pytest.approx(
    np.mean(np.sum((mean_in - np.eye(4)[labels]) ** 2, -1)), abs=1e-4
  )
  scores = np.concatenate([1 - mean_in.max(-1), 1 - mean_ood.max(-1)])
  ood = np.concatenate([np.zeros(50), np.ones(40)])
  assert row["ood_auroc"] == pytest.approx(roc_auc_score(ood, scores), abs=1e-4)
  assert row["step_time_ratio"] == 3.0 and row["flop_ratio"] == 3.0 and row["nll_std"] == 0.0


def test_summary_adds_the_deep_ensemble_of_the_seeds_and_the_issue_15_claims():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, 30)

  def det_run(seed):
    r = _run(0.9, 0.5, 0.05, 0.8, 1.0)
    g = np.random.default_rng(seed)
    r["predictions"] = (g.dirichlet(np.ones(3), 30), labels, g.dirichlet(np.ones(3), 20))
    return r

  runs = {"deterministic": [det_run(0), det_run(1)]}
  out = bench.summarize(runs)
  assert bench.DEEP_ENSEMBLE in out and out[bench.DEEP_ENSEMBLE]["flop_ratio"] == 2.0
  # Synthetic rows against a deterministic NLL of 0.5 and an ensemble NLL of 0.3.
  out = {
    "deterministic": {**out["deterministic"], "nll": 0.5, "ece": 0.05, "ood_auroc": 0.8},
    bench.DEEP_ENSEMBLE: {**out[bench.DEEP_ENSEMBLE], "nll": 0.3, "ece": 0.01},
  }
  base = {k: v for k, v in out["deterministic"].items()}
  out["mimo"] = {**base, "nll": 0.39, "flop_ratio": 1.1}  # 55% of the gain, cheap: pass.
  out["packed"] = {**base, "nll": 0.35, "flop_ratio": 2.0}  # 75% of the gain, 2x FLOPs: fail.
  out["swag"] = {**base, "nll": 0.45, "ece": 0.04}  # Both lower: pass.
  out["laplace"] = {**base, "nll": 0.45, "ece": 0.06}  # ECE higher: fail.
  out["logitnorm"] = {**base, "ood_auroc": 0.9}
  out["focal"] = {**base, "ece": 0.07}
  claims = bench.check_claims(out)
  passed = {k: v[0] for k, v in claims.items()}
  assert passed["mimo_ensemble_like_nll_at_one_forward"] is True
  assert "55% of the ensemble's NLL gain" in claims["mimo_ensemble_like_nll_at_one_forward"][1]
  assert passed["packed_ensemble_like_nll_at_one_forward"] is False
  assert passed["swag_nll_and_ece_below_deterministic"] is True
  assert passed["laplace_nll_and_ece_below_deterministic"] is False
  assert passed["logitnorm_ood_auroc_above_deterministic"] is True
  assert passed["focal_ece_below_deterministic"] is False
  # The baseline row is not a method: it joins neither the accuracy nor the ECE claim.
  assert bench.DEEP_ENSEMBLE not in claims["accuracy_within_1pt_of_deterministic"][1]
