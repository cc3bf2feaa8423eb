"""`python -m keras_unc plan`: the cost of a config before training, on every recipe.

The FLOP counter is checked against a count by hand on a tiny network and shown to be the
one `benchmarks/methods.py` uses; the parameter counts of two published networks against
their architecture; `plan` runs on every file of `gin_configs/experiments/` (the shared
parts refuse with the fix named), in this process, without data or training.
"""

import glob
import importlib.util
import json
import math
import os
import subprocess
import sys

import gin
import keras
import pytest

from keras_unc import config
from keras_unc.cli import plan as plan_cli
from keras_unc.training import cost, optim
from keras_unc.training.network import build_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(
  os.path.relpath(p, config.GIN_DIR)
  for p in glob.glob(os.path.join(config.GIN_DIR, "experiments", "**", "*.gin"), recursive=True)
)
# Shared parts: included by recipes, not runs of their own (no dataset or no step budget).
SHARED = {
  "experiments/plex/vit_l32_plex.gin",
  "experiments/rrl/resnet50_base.gin",
  "experiments/ub_imagenet/imagenet.gin",
  "experiments/ub_imagenet/imagenet_c.gin",
  "experiments/url/imagenet.gin",
  "experiments/vit_finetune/vit_b16_finetune.gin",
}
# Recipes on ImageNet-21k, for which TFDS ships no builder: planned with --num_classes
# (timm's augreg_in21k heads, the checkpoints these recipes start from: 21843 classes).
IMAGENET21K_CLASSES = 21843
# Slots per trainable weight of each optimizer: moments (+1 with gradient accumulation).
SLOTS = {"sgd": 1, "adamw": 2, "lamb": 2, "adam": 2}


def _parse(path, params=()):
  gin.clear_config()
  config.parse([path], list(params))


def _bench():
  spec = importlib.util.spec_from_file_location(
    "methods_benchmark", os.path.join(REPO, "benchmarks", "methods.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_counter_equals_a_count_by_hand():
  # Conv 3x3 (3 -> 4 channels, valid) on 8x8: 6x6x4 outputs of 27 multiply-adds; then a
  # dense layer 144 -> 5. No biases, so every FLOP is a multiply or an add of a product.
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
  x = keras.layers.Flatten()(x)
  network = keras.Model(inputs, keras.layers.Dense(5, use_bias=False)(x))
  by_hand = 2 * (6 * 6 * 4) * (3 * 3 * 3) + 2 * 144 * 5
  assert cost.forward_flops(network, (8, 8, 3)) == by_hand == 9216
  assert cost.forward_flops(network, (8, 8, 3), batch_size=3) == 3 * by_hand


def test_plan_flops_are_the_benchmark_counter_on_its_network():
  bench = _bench()
  assert bench.forward_flops is cost.forward_flops  # Shared, not a copy.
  _parse("benchmarks/fashion.gin")
  found = plan_cli.plan("h100", 1, 0.5)
  method = config.query("train.method")
  network = build_network(method, 10, (28, 28, 1))
  counted = bench.forward_flops(network, tuple(network.inputs[0].shape[1:]))
  assert found["forward_flops_per_example"] == counted > 0
  assert found["input_shape"] == [28, 28, 1] and found["num_classes"] == 10
  assert found["params"] == network.count_params()
  assert found["optimizer_slots_per_parameter"] == 2.0  # AdamW: two moments.


def _vit_s16_params(classes=1000, width=384, mlp=1536, depth=12, patch=16):
  """big_vision ViT-S/16 i1k by hand: patch embedding, blocks, final norm, pre-logits
  (rep_size=True) and head; the sin-cos position embedding is not trained."""
  block = 2 * 2 * width + (width * 3 * width + 3 * width) + (width * width + width)
  block += (width * mlp + mlp) + (mlp * width + width)
  embed = patch * patch * 3 * width + width
  return embed + depth * block + 2 * width + (width * width + width) + width * classes + classes


def _published_counts(found, path):
  """The parameter and FLOP counts of two published networks, against their architecture."""
  if path == "experiments/big_vision/vit_s16_i1k.gin":
    assert found["trainable_params"] == _vit_s16_params() == 22_122_472
    assert found["params"] - found["trainable_params"] == 196 * 384  # sin-cos posemb
  if path == "experiments/ub_imagenet/deterministic.gin":
    # ResNet-50: torchvision's 25,557,032 parameters + 53,120 BatchNorm statistics.
    assert found["params"] == 25_557_032 + 53_120
    assert 8.1e9 < found["forward_flops_per_example"] < 8.3e9  # 4.1 GMACs


def _check(found, path):
  assert found["params"] >= found["trainable_params"] > 0
  assert found["forward_flops_per_example"] > 0 and found["activation_bytes_per_replica"] > 0
  replicas, per = found["replicas"], found["per_replica_batch"]
  assert per * replicas == found["batch_size"] == config.value("train.batch_size")
  assert found["total_steps"] == config.value("train.total_steps")
  # 3 x the training forward x the global batch; time = FLOPs / (chips x peak x MFU).
  train = found["train_forward_flops_per_example"]
  assert math.isclose(found["step_flops"], 3 * train * found["batch_size"], rel_tol=1e-9)
  peak = found["peak_tflops_per_chip"] * 1e12 * found["chips"] * found["mfu"]
  wall = found["step_flops"] * found["total_steps"] / peak
  assert math.isclose(found["wall_seconds"], wall, rel_tol=1e-9)
  name = config.value("make_optimizer.name")
  slots = SLOTS[name] + (config.value("make_optimizer.gradient_accumulation_steps") > 1)
  # Slots over the trainable weights, plus a few scalars (step counters).
  assert slots <= found["optimizer_slots_per_parameter"] < slots + 0.01, path
  assert found["memory_bytes_per_replica"] > found["activation_bytes_per_replica"]
  assert json.loads(json.dumps({k: v for k, v in found.items() if k != "table"}))
  assert "wall time" in found["table"]


@pytest.mark.parametrize("path", RECIPES)
def test_plan_runs_on_every_recipe(path):
  _parse(path)
  if path in SHARED:
    with pytest.raises(plan_cli.PlanError, match="is not set.*through a recipe that includes"):
      plan_cli.plan()
    return
  num_classes = None
  if config.value("train.dataset") == "tfds:imagenet21k":
    with pytest.raises(plan_cli.PlanError, match="--num_classes=N"):
      plan_cli.plan()
    _parse(path)
    num_classes = IMAGENET21K_CLASSES
  found = plan_cli.plan("tpu_v4", 1, 0.4, num_classes=num_classes)
  _check(found, path)
  _published_counts(found, path)
  assert keras.config.dtype_policy().name == "float32"  # The global policy is restored.


def test_the_settings_that_cannot_be_planned_are_refused():
  _parse("benchmarks/fashion.gin")
  with pytest.raises(plan_cli.PlanError, match="mfu=1.5 must be in"):
    plan_cli.plan("h100", 1, 1.5)
  with pytest.raises(plan_cli.PlanError, match="not divisible by 3"):
    plan_cli.plan("h100", 3, 0.4)  # batch 100 over 3 GPUs


def test_mixed_precision_halves_the_activations_and_uses_the_bf16_peak():
  _parse("benchmarks/fashion.gin")
  full = plan_cli.plan("a100", 1, 0.4)
  _parse("benchmarks/fashion.gin", ["set_precision.policy = 'mixed_bfloat16'"])
  mixed = plan_cli.plan("a100", 1, 0.4)
  assert full["compute_dtype"] == "float32" and mixed["compute_dtype"] == "bfloat16"
  assert full["peak_tflops_per_chip"] == 156.0 and mixed["peak_tflops_per_chip"] == 312.0
  # The backbone's outputs are bfloat16, the head's float32: a bit over half.
  assert 0.5 < mixed["activation_bytes_per_replica"] / full["activation_bytes_per_replica"] < 0.6
  assert mixed["step_flops"] == full["step_flops"]


def test_optimizer_state_counts_the_built_slots():
  variables = [keras.Variable(keras.ops.zeros((10, 3))), keras.Variable(keras.ops.zeros((3,)))]
  sgd = optim.make_optimizer(10, name="sgd", momentum=0.9)
  adamw = optim.make_optimizer(10, name="adamw", gradient_accumulation_steps=2)
  weights = 33 * 4
  # SGD: momentum; AdamW: two moments + accumulated gradients; + int64 step counters.
  assert cost.optimizer_state(sgd, variables)["bytes"] - weights < 32
  assert 0 <= cost.optimizer_state(adamw, variables)["bytes"] - 3 * weights < 32


def test_cli_prints_the_table_and_the_json(tmp_path):
  out = tmp_path / "plan.json"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "keras_unc",
      "plan",
      "--gin_file=benchmarks/fashion.gin",
      "--accelerator=h100",
      "--chips=2",
      "--mfu=0.5",
      f"--json={out}",
    ],
    capture_output=True,
    text=True,
    cwd=str(tmp_path),
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  found = json.loads(lines[-1])
  assert found == json.loads(out.read_text())
  assert found["replicas"] == 2 and found["per_replica_batch"] == 50 and found["mfu"] == 0.5
  table = "\n".join(lines[:-1])
  for row in ("parameters", "FLOPs / training step", "optimizer state", "activations"):
    assert row in table
  assert f"{found['params']:,}" in table
