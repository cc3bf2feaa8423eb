"""The post-hoc stage end to end: `calibrate` on a trained tiny workdir fits, saves, evaluates
and re-exports; bad calibration data and stale states are refused without touching anything;
the export serves the post-hoc outputs in a fresh process.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keras_unc import config
from keras_unc.posthoc import state
from keras_unc.posthoc.state import StalePosthocError
from keras_unc.training import calibrate, restore
from keras_unc.training import trainer as train_lib
from tests.e2e.helpers import REPO, TINY

# Training sees digits train[:1200]; the last 300 training images are the calibration split.
TRAIN = ("train.split = 'train[:1200]'", "train.evaluators = [@ClassificationEvaluator()]")
CAL = dict(split="train[1200:]", calibrator="temperature", conformal="aps", detector="energy")


def _parse(params=()):
  import gin

  gin.clear_config()
  config.parse([TINY], [*TRAIN, *params])


def _tree_digest(path):
  """sha256 over every file under `path` (names and bytes): 'nothing was touched'."""
  digest = hashlib.sha256()
  for root, dirs, names in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(names):
      full = os.path.join(root, name)
      digest.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("posthoc"))
  _parse()
  train_lib.train(workdir, "train_and_eval")
  _parse()
  result = calibrate.calibrate(workdir, **CAL)
  return workdir, result


def _images(n=64):
  from keras_unc.data import get_source

  x, _ = get_source("digits").arrays("test")
  return np.asarray(x[:n])


def test_calibrate_saves_state_and_reports_before_and_after(calibrated):
  workdir, result = calibrated
  with open(os.path.join(workdir, "posthoc", state.MANIFEST)) as f:
    manifest = json.load(f)
  assert manifest["checkpoint"]["step"] == 40
  assert [c["kind"] for c in manifest["components"]] == ["detector", "calibrator", "conformal"]
  assert manifest["data"] == {
    "dataset": "digits",
    "split": "train[1200:]",
    "preprocess": "",
    "num_examples": 300,
  }
  found = result["metrics"]
  assert {"test/ece", "posthoc/test/ece", "posthoc/test/set_coverage"} <= found.keys()
  assert found["test/accuracy"] == pytest.approx(found["posthoc/test/accuracy"], abs=1e-6)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = json.loads(f.readlines()[-1])
  assert last["posthoc/test/ece"] == pytest.approx(found["posthoc/test/ece"])


def test_export_serves_posthoc_outputs_equal_to_inprocess(calibrated):
  import tensorflow as tf

  workdir, result = calibrated
  _parse()
  network, _, info = restore.restore_network(workdir)
  components = calibrate.load_fresh(workdir, info)
  images = _images()
  raw = {k: np.asarray(v) for k, v in network(images.astype(np.float32), training=False).items()}
  expected = state.apply(components, raw)
  serve = tf.saved_model.load(result["export"]).signatures["serving_default"]
  served = {k: np.asarray(v) for k, v in serve(images=tf.constant(images)).items()}
  assert {"prediction_set", "set_size", "ood_score", "is_ood", "uncalibrated_probs"} <= set(served)
  for key in ("probs", "uncalibrated_probs", "uncertainty", "ood_score", "set_size"):
    np.testing.assert_allclose(served[key], expected[key], atol=1e-5, err_msg=key)
  np.testing.assert_array_equal(served["prediction_set"], expected["prediction_set"])
  np.testing.assert_array_equal(served["is_ood"], expected["is_ood"])
  assert served["prediction_set"].dtype == bool and served["set_size"].shape == (len(images),)


def test_saved_model_serves_in_a_fresh_process(calibrated, tmp_path):
  """No Python state outside the SavedModel: `saved_model_cli run` and a fresh
  `tf.saved_model.load` give the in-process outputs from uint8 images.
  """
  import tensorflow as tf

  workdir, result = calibrated
  images = _images(8)
  np.save(tmp_path / "images.npy", images)
  serve = tf.saved_model.load(result["export"]).signatures["serving_default"]
  expected = {k: np.asarray(v) for k, v in serve(images=tf.constant(images)).items()}
  script = (
    "import sys, numpy as np, tensorflow as tf\n"
    "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
    "out = f(images=tf.constant(np.load(sys.argv[2])))\n"
    "np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})\n"
  )
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  out = tmp_path / "served.npz"
  subprocess.run(
    [sys.executable, "-c", script, result["export"], str(tmp_path / "images.npy"), str(out)],
    check=True,
    env=env,
    timeout=300,
  )
  with np.load(out) as z:
    for key, value in expected.items():
      np.testing.assert_allclose(z[key], value, atol=1e-5, err_msg=key)
  cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable))
  proc = subprocess.run(
    [
      cli,
      "run",
      "--dir",
      result["export"],
      "--tag_set",
      "serve",
      "--signature_def",
      "serving_default",
      "--inputs",
      f"images={tmp_path / 'images.npy'}",
      "--outdir",
      str(tmp_path / "cli"),
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  for key in ("prediction_set", "is_ood", "probs"):
    np.testing.assert_allclose(np.load(tmp_path / "cli" / f"{key}.npy"), expected[key], atol=1e-5)


def _copy(workdir, tmp_path, name):
  target = str(tmp_path / name)
  shutil.copytree(workdir, target)
  return target


def test_overlapping_calibration_split_is_refused_and_nothing_changes(calibrated, tmp_path):
  workdir = _copy(calibrated[0], tmp_path, "overlap")
  before = _tree_digest(workdir)
  _parse()
  with pytest.raises(calibrate.CalibrationDataError, match=r"overlaps .* by 200 examples"):
    calibrate.calibrate(workdir, **{**CAL, "split": "train[1000:]"})
  assert _tree_digest(workdir) == before


def test_too_small_calibration_split_is_refused_with_the_minimum(calibrated, tmp_path):
  workdir = _copy(calibrated[0], tmp_path, "small")
  before = _tree_digest(workdir)
  _parse()
  with pytest.raises(ValueError, match=r"\b9\b"):  # alpha 0.1 needs n >= 9.
    calibrate.calibrate(workdir, **{**CAL, "split": "train[1200:1205]"})
  assert _tree_digest(workdir) == before


def test_stale_state_is_refused_by_export_and_left_out_at_the_end_of_training(
  calibrated, tmp_path, caplog
):
  workdir = _copy(calibrated[0], tmp_path, "stale")
  _parse(["train.total_steps = 50"])
  with caplog.at_level("WARNING"):
    result = train_lib.train(workdir, "train")  # Resumes 40 -> 50, exports without it.
  assert "Exporting without the post-hoc state" in caplog.text
  import tensorflow as tf

  serve = tf.saved_model.load(result["export"]).signatures["serving_default"]
  assert "prediction_set" not in serve.structured_outputs
  posthoc_before = _tree_digest(os.path.join(workdir, "posthoc"))
  _parse(["train.total_steps = 50"])
  with pytest.raises(StalePosthocError, match=r"step 40 .* step 50"):
    train_lib.train(workdir, "export")
  assert _tree_digest(os.path.join(workdir, "posthoc")) == posthoc_before


def test_calibrate_verb_and_its_refusal(calibrated, tmp_path):
  workdir = _copy(calibrated[0], tmp_path, "cli")
  base = [sys.executable, "-m", "keras_unc", "calibrate", f"--workdir={workdir}"]
  params = [
    "--gin_param=calibrate.split='train[1200:]'",
    "--gin_param=calibrate.calibrator='temperature'",
  ]
  proc = subprocess.run(base + params, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "posthoc/test/ece" in proc.stdout and "calibrator temperature" in proc.stdout
  proc = subprocess.run(
    base + ["--gin_param=calibrate.split='train[:100]'", params[1]],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 2 and "overlaps" in proc.stderr, proc.stderr[-3000:]


def test_calibrate_at_end_of_training_exports_the_posthoc_outputs(tmp_path):
  import tensorflow as tf

  _parse(
    [
      "train.total_steps = 20",
      "train.evaluators = [@ClassificationEvaluator(), @OODEvaluator()]",
      "train.calibrate_at_end = True",
      "calibrate.split = 'train[1200:]'",
      "calibrate.calibrator = 'temperature'",
      "calibrate.detector = @knn_detector()",
      "knn_detector.k = 5",
    ]
  )
  result = train_lib.train(str(tmp_path), "train_and_eval")
  assert {"test/ece", "posthoc/test/ece", "posthoc/ood_mnist/auroc_ood_score"} <= set(
    result["metrics"]
  )
  with open(tmp_path / "posthoc" / state.MANIFEST) as f:
    manifest = json.load(f)
  assert manifest["checkpoint"]["step"] == 20
  assert manifest["fit_data"]["split"] == "train[:1200]"
  assert manifest["components"][0]["config"]["k"] == 5
  serve = tf.saved_model.load(result["export"]).signatures["serving_default"]
  assert {"uncalibrated_probs", "ood_score", "is_ood"} <= set(serve.structured_outputs)
