"""benchmarks/serving.py and the serving option of the heteroscedastic heads it measures
(`test_share_samples`): noise draws per call, outputs kept, the summary, a quick run."""

import importlib.util
import json
import math
import os

import keras
import numpy as np
import pytest

from keras_unc.layers.heteroscedastic import HetXLDense, MCSoftmaxDenseFA
from keras_unc.methods import heads

_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "serving.py"
)
_spec = importlib.util.spec_from_file_location("serving_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

B, D, C = 4, 6, 5


def _x(seed=0, b=B):
  return np.random.default_rng(seed).normal(size=(b, D)).astype("float32")


def _record_draws(monkeypatch, cls):
  """Wraps `cls._sample_noise`; returns the list of the ε shapes each call drew."""
  drawn, original = [], cls._sample_noise

  def wrapped(self, batch_size, num_samples):
    eps_factor, eps_diag = original(self, batch_size, num_samples)
    drawn.append(tuple(eps_diag.shape))
    return eps_factor, eps_diag

  monkeypatch.setattr(cls, "_sample_noise", wrapped)
  return drawn


@pytest.mark.parametrize("cls", [MCSoftmaxDenseFA, HetXLDense])
def test_test_share_samples_draws_one_row_at_inference_only(monkeypatch, cls):
  drawn = _record_draws(monkeypatch, cls)
  layer = cls(
    C, num_factors=2, train_mc_samples=3, test_mc_samples=7, seed=0, test_share_samples=True
  )
  x = _x()
  layer(x, training=True)
  layer(x)
  noise_dim = D if cls is HetXLDense else C
  # Training keeps one draw per example; inference draws [1, S, N] for the whole batch.
  assert drawn == [(B, 3, noise_dim), (1, 7, noise_dim)]
  same = np.repeat(_x(b=1), 2, axis=0)
  out = np.asarray(layer(same))
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # Shared ε: identical rows.
  out = np.asarray(layer(same, training=True))
  assert not np.allclose(out[0], out[1], atol=1e-4)  # Own ε per example in training.


@pytest.mark.parametrize("cls", [MCSoftmaxDenseFA, HetXLDense])
def test_shared_and_fewer_samples_keep_shape_and_predictive(cls):
  x = _x(seed=1)

  def predictive(samples, shared, seed):
    layer = cls(C, num_factors=2, test_mc_samples=samples, seed=seed, test_share_samples=shared)
    layer.build(x.shape)
    rng = np.random.default_rng(0)  # Same weights in every variant; noise large enough to matter.
    layer.set_weights(
      [0.5 * rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
    )
    out = np.asarray(layer(x))
    assert out.shape == (B, C)
    return np.asarray(keras.ops.softmax(out, axis=-1))

  reference = predictive(20000, False, seed=0)
  # The serving setting (100 shared samples) and the default count shared stay within Monte
  # Carlo error (a probability's standard error is at most 0.5 / sqrt(S)) of 20,000 samples.
  for samples in (100, 1000):
    for seed in (1, 2):
      found = predictive(samples, True, seed)
      np.testing.assert_allclose(found, reference, atol=1 / math.sqrt(samples))
  # The check can fail: 2 samples are far from the predictive for some example.
  assert np.abs(predictive(2, True, 1) - reference).max() > 0.1


def test_option_is_in_the_config_and_passed_by_het_head():
  layer = MCSoftmaxDenseFA(C, num_factors=2, test_share_samples=True)
  assert layer.get_config()["test_share_samples"] is True
  assert MCSoftmaxDenseFA.from_config(layer.get_config()).test_share_samples is True
  assert HetXLDense.from_config(HetXLDense(C).get_config()).test_share_samples is False
  for xl in (False, True):
    het = heads.Heteroscedastic(num_factors=2, test_mc_samples=100, test_share_samples=True, xl=xl)
    built = het.het_layer(C)
    assert built.test_share_samples is True and built.test_mc_samples == 100
    assert built.train_mc_samples == 1000 and built.share_samples_across_batch is False


def test_summary_ratios_and_targets():
  seconds = {
    ("deterministic", 1): 0.002,
    ("deterministic", 64): 0.02,
    ("hetxl", 1): 0.004,
    ("hetxl", 64): 0.06,
    ("hetxl@s100_shared", 1): 0.002,
    ("hetxl@s100_shared", 64): 0.025,
  }
  flops = {"deterministic": 100, "hetxl": 300, "hetxl@s100_shared": 120}
  out = bench.summarize(seconds, flops)
  assert out["deterministic"]["latency_ratio_b64"] == 1.0
  assert out["hetxl"]["latency_ratio_b64"] == pytest.approx(3.0)
  assert out["hetxl"]["images_per_s_b64"] == pytest.approx(64 / 0.06, abs=0.1)
  assert out["hetxl"]["images_per_s_b1"] == pytest.approx(250.0)
  assert out["hetxl@s100_shared"]["flop_ratio"] == pytest.approx(1.2)
  metrics = {
    "hetxl": {
      "default": {"accuracy": 0.80, "nll": 0.60, "ece": 0.1},
      "s100_shared": {"accuracy": 0.79, "nll": 0.605, "ece": 0.1},  # 1 point less: fails.
    }
  }
  targets = bench.check_targets(out, metrics)
  assert {k: v[0] for k, v in targets.items()} == {
    "hetxl@s100_shared_b64_latency_at_most_1.5x": True,  # 1.25x
    "hetxl@s100_shared_metrics_unchanged": False,
  }
  out["hetxl@s100_shared"]["latency_ratio_b64"] = 1.6
  assert not bench.check_targets(out, {})["hetxl@s100_shared_b64_latency_at_most_1.5x"][0]


def test_every_registered_method_is_measured_and_unknown_refused():
  assert bench.METHODS[0] == "deterministic" and "url" in bench.METHODS
  assert set(bench.HET) <= set(bench.METHODS) and bench.SERVING in bench.SETTINGS
  with pytest.raises(SystemExit, match="Unknown method"):
    bench.main(["--quick", "--methods", "nope"])


def test_quick_run_prints_table_and_json(capsys):
  # The plumbing (train, export, tf.saved_model.load, timing, table, JSON) on the tiny ViT with
  # deterministic alone: 2 steps, one timing round (~10 s; the heteroscedastic settings add
  # ~15 s per export, so their path is covered by the unit tests above and the full run).
  bench.main(["--quick", "--methods=deterministic", "--rounds=1", "--metric_steps=0"])
  lines = capsys.readouterr().out.strip().splitlines()
  found = json.loads(lines[-1])
  assert set(found["methods"]) == {"deterministic"} and found["quick"] is True
  row = found["methods"]["deterministic"]
  for key in ("images_per_s_b1", "images_per_s_b64"):
    assert math.isfinite(row[key]) and row[key] > 0
  assert row["latency_ratio_b1"] == row["latency_ratio_b64"] == row["flop_ratio"] == 1.0
  assert found["image_shape"] == [8, 8, 1] and found["batch_sizes"] == [1, 64]
  assert found["metrics"] == {} and found["targets"] == {}
  assert any(line.startswith("deterministic ") for line in lines)
