"""benchmarks/accelerator.py: its FLOP formula and peak table, and a CPU run at the smoke size
in a process where `import tensorflow` fails (the GPU machines it is for have none)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

from tests.layers.helpers import BLOCK_TENSORFLOW

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATH = os.path.join(_ROOT, "benchmarks", "accelerator.py")
_spec = importlib.util.spec_from_file_location("accelerator_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SMALL = [
  "--model=Ti/16",
  "--batch=4",
  "--image_size=32",
  "--steps=2",
  "--warmup=1",
  "--depth=1",
  "--num_classes=10",
  "--het_factors=3",
  "--het_samples=8",
  "--gp_inducing=32",
  "--peak_flops=1e12",
]

# Runs the script as __main__ after an import hook that refuses TensorFlow.
RUN_WITHOUT_TENSORFLOW = (
  BLOCK_TENSORFLOW
  + """
import runpy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
)


def test_vit_flops_by_hand():
  # ViT-B/16, 224 px: 196 patches + the class token, width 768, MLP 3072, 12 blocks.
  t, d, m = 197, 768, 3072
  by_hand = 2 * 196 * 768 * d + 12 * (8 * t * d * d + 4 * t * t * d + 4 * t * d * m) + 2 * d * 1000
  assert bench.vit_forward_flops("B/16", 224, 1000) == by_hand
  assert math.isclose(by_hand, 35.13e9, rel_tol=1e-3)  # The module docstring's 35.1 GFLOP.
  assert bench.vit_forward_flops("Ti/16", 32, 10, depth=1) == 5_626_368


def test_peak_by_device_kind():
  assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert bench.peak_flops("NVIDIA H100 PCIe") == 756e12
  assert bench.peak_flops("NVIDIA H200") == 989e12
  assert bench.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
  assert bench.peak_flops("TPU v4") == 275e12
  assert bench.peak_flops("cpu") is None
  assert bench.peak_flops("cpu", override=2e12) == 2e12


def test_runs_on_cpu_without_tensorflow():
  flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
  result = subprocess.run(
    [sys.executable, "-c", RUN_WITHOUT_TENSORFLOW, _PATH, *SMALL],
    cwd=_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-6000:]
  lines = result.stdout.strip().splitlines()
  summary = json.loads(lines[-1])
  assert lines[2].split() == ["head", "img/s", "ratio", "GFLOP/img", "MFU"]
  assert summary["device"] == "cpu" and summary["precision"] == "mixed_bfloat16"
  assert (summary["model"], summary["batch"], summary["image_size"]) == ("Ti/16", 4, 32)
  assert summary["vit_train_flops_per_image"] == 3 * 5_626_368
  assert list(summary["heads"]) == list(bench.HEADS)
  assert summary["heads"]["deterministic"]["ratio"] == 1.0
  for name, head in summary["heads"].items():
    base = summary["heads"]["deterministic"]["img_s"]
    assert head["img_s"] > 0 and math.isclose(head["ratio"], head["img_s"] / base), name
    # XLA's count of the whole step: the backward pass included (a forward-only count would
    # be a third of the analytic training FLOPs), the heads and AdamW on top.
    assert 1.0 < head["flops_per_image"] / summary["vit_train_flops_per_image"] < 1.5, name
    assert math.isclose(head["mfu"], head["flops_per_image"] * head["img_s"] / 1e12), name
  # HET-XL's noise lives in the embedding space: more FLOPs than the linear head.
  assert (
    summary["heads"]["hetxl"]["flops_per_image"]
    > summary["heads"]["deterministic"]["flops_per_image"]
  )
