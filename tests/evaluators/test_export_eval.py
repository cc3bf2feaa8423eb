"""`--mode=eval --export_dir`: the exported SavedModel evaluates like the trained network."""

import json
import math
import os

import pytest

from tests.e2e.helpers import run_inprocess, run_main

# Nearest-neighbour resizing keeps the OOD images integral, so the uint8 SavedModel input
# sees exactly what the in-memory network saw.
OOD = (
  "OODEvaluator.ood = {'mnist': ('mnist', 'test[:300]', 'resize(8, method=\"nearest\")')}",
  "FewShotEvaluator.datasets = {'digits': ('digits', 'train', 'test')}",
  "FewShotEvaluator.shots = (1, 5)",
  "train.evaluators = [@ClassificationEvaluator(), @OODEvaluator(), @FewShotEvaluator()]",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny_export")
  result = run_inprocess(workdir, params=OOD)
  return workdir, result


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_eval_export_dir_matches_inprocess_evaluation(trained):
  workdir, result = trained
  inprocess = result["metrics"]
  assert inprocess["step"] == 40 and result["export"]
  assert {
    "test/top5_accuracy",
    "test/aurc",
    "ood_mnist/auroc_mahalanobis",
    "fewshot/digits_5shot",
  } <= inprocess.keys()
  before = len(_records(workdir))
  proc = run_main(
    workdir, "--mode=eval", f"--export_dir={result['export']}", *[f"--gin_param={p}" for p in OOD]
  )
  assert "test/accuracy" in proc.stdout and result["export"] in proc.stdout
  records = _records(workdir)
  assert len(records) == before + 1
  exported = records[-1]
  assert exported.keys() == inprocess.keys() and exported["step"] == 40
  for k, v in inprocess.items():
    if isinstance(v, float) and math.isnan(v):
      assert math.isnan(exported[k]), k
    else:
      assert exported[k] == pytest.approx(v, abs=1e-5), k
  plots = os.listdir(os.path.join(workdir, "plots"))
  assert {
    "test_reliability_diagram_step40.png",
    "ood_mnist_uncertainty_histogram_step40.png",
  } <= set(plots)


def test_export_dir_needs_eval_mode(trained):
  workdir, result = trained
  proc = run_main(workdir, "--mode=train", f"--export_dir={result['export']}", check=False)
  assert proc.returncode == 2 and "--mode=eval" in proc.stderr
