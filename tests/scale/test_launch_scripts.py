"""The launch scripts: valid bash, usage text, dry runs print the right commands."""

import glob
import os
import subprocess

import pytest

from tests.e2e.helpers import REPO

LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ["tpu_vm.sh", "tpu_vm_worker.sh", "multi_gpu.sh", "multi_worker.sh", "tensorboard.sh"]


def _run(script, *args, **env):
  clean = {
    k: v
    for k, v in os.environ.items()
    if k
    not in (
      "TPU_NAME",
      "ZONE",
      "BUCKET",
      "HOSTS",
      "GIN_FILE",
      "WORKDIR",
      "TASK_INDEX",
      "GPUS",
      "EXTRA_ARGS",
      "PROJECT",
      "SPOT",
    )
  }
  return subprocess.run(
    ["bash", os.path.join(LAUNCH, script), *args],
    capture_output=True,
    text=True,
    timeout=60,
    env={**clean, **env},
    cwd=REPO,
  )


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(LAUNCH, "*.sh"))))
def test_every_launch_script_parses_and_is_strict(path):
  assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0
  with open(path) as f:
    text = f.read()
  assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
  proc = _run(script, "--help")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip()
  if script != "tpu_vm_worker.sh":
    assert "Usage: launch/" + script in proc.stdout and "DRY_RUN" in proc.stdout


def test_tpu_vm_dry_run_prints_the_gcloud_commands():
  proc = _run(
    "tpu_vm.sh",
    "all",
    "tensorboard",
    "delete",
    TPU_NAME="unc-v4",
    ZONE="us-central2-b",
    BUCKET="gs://my-bucket",
    DRY_RUN="1",
    SPOT="1",
    PROJECT="proj",
    GIN_FILE="gin_configs/demo/mnist.gin",
    EXTRA_ARGS="--gin_param=train.total_steps=100",
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  create = [l for l in lines if " tpu-vm create " in l]
  assert create == [
    "gcloud compute tpus tpu-vm create unc-v4 --zone=us-central2-b "
    "--project=proj --accelerator-type=v4-8 --version=tpu-ubuntu2204-base --spot"
  ]
  assert any(" tpu-vm scp " in l and "--worker=all" in l for l in lines)
  out = proc.stdout
  assert "tensorflow-tpu==2.20.*" in out and "pip install -q --no-deps -e ." in out
  train = [l for l in lines if "launch/tpu_vm_worker.sh" in l]
  assert len(train) == 1 and "--worker=all" in train[0]
  assert "WORKDIR_GS=gs://my-bucket/keras_unc/mnist" in train[0]
  assert "GIN_FILE=gin_configs/demo/mnist.gin TPU_FLAG=local" in train[0]
  assert "train.total_steps=100" in train[0]
  assert any(
    l.startswith("bash ") and l.endswith("launch/tensorboard.sh gs://my-bucket/keras_unc/mnist")
    for l in lines
  )
  assert any(" tpu-vm delete unc-v4 " in l for l in lines)
  # The worker script passes --strategy=tpu --tpu=$TPU_FLAG to the trainer.
  with open(os.path.join(LAUNCH, "tpu_vm_worker.sh")) as f:
    worker = f.read()
  assert "--strategy=tpu" in worker and '--tpu="${TPU_FLAG:-local}"' in worker


@pytest.mark.parametrize("missing", ["TPU_NAME", "ZONE"])
def test_tpu_vm_names_a_missing_parameter(missing):
  env = {"TPU_NAME": "t", "ZONE": "z", "DRY_RUN": "1"}
  del env[missing]
  proc = _run("tpu_vm.sh", "create", **env)
  assert proc.returncode != 0 and missing in proc.stderr


def test_tpu_vm_train_needs_a_bucket():
  proc = _run("tpu_vm.sh", "train", TPU_NAME="t", ZONE="z", BUCKET="/local/path", DRY_RUN="1")
  assert proc.returncode == 2 and "BUCKET=gs://" in proc.stderr
  proc = _run("tpu_vm.sh", "reboot", TPU_NAME="t", ZONE="z", DRY_RUN="1")
  assert proc.returncode == 2 and "unknown step 'reboot'" in proc.stderr


def test_multi_worker_dry_run_writes_one_tf_config_per_worker():
  proc = _run(
    "multi_worker.sh",
    "--gin_param=train.total_steps=5",
    HOSTS="127.0.0.1:2222,node2:2223",
    GIN_FILE="g.gin",
    WORKDIR="/w",
    DRY_RUN="1",
  )
  assert proc.returncode == 0, proc.stderr
  local, remote = proc.stdout.splitlines()
  assert local.startswith(
    'TF_CONFIG=\'{"cluster": {"worker": ["127.0.0.1:2222","node2:2223"]}, '
    '"task": {"type": "worker", "index": 0}}\''
  )
  assert "--strategy=multi_worker" in local and "--workdir=/w" in local
  assert "train.total_steps=5" in local
  assert remote.startswith("ssh node2 ") and 'index\\":\\ 1' in remote
  one = _run(
    "multi_worker.sh", HOSTS="a:1,b:2", GIN_FILE="g.gin", WORKDIR="/w", DRY_RUN="1", TASK_INDEX="1"
  )
  assert one.returncode == 0 and '"index": 1' in one.stdout and one.stdout.count("TF_CONFIG") == 1
  bad = _run("multi_worker.sh", HOSTS="a:1,b", GIN_FILE="g.gin", WORKDIR="/w", DRY_RUN="1")
  assert bad.returncode == 2 and "'b' is not host:port" in bad.stderr
  out_of_range = _run("multi_worker.sh", HOSTS="a:1", GIN_FILE="g", WORKDIR="/w", TASK_INDEX="3")
  assert out_of_range.returncode == 2 and "TASK_INDEX=3" in out_of_range.stderr


def test_multi_gpu_dry_run():
  proc = _run(
    "multi_gpu.sh",
    "--gin_param=train.batch_size=512",
    GIN_FILE="g.gin",
    WORKDIR="/w",
    GPUS="0,1",
    DRY_RUN="1",
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("CUDA_VISIBLE_DEVICES=0,1 ")
  assert "--strategy=mirrored" in proc.stdout and "train.batch_size=512" in proc.stdout
  assert _run("multi_gpu.sh", WORKDIR="/w").returncode != 0  # GIN_FILE missing.


def test_tensorboard():
  proc = _run("tensorboard.sh", "gs://b/run", "7007", DRY_RUN="1")
  assert proc.returncode == 0 and proc.stdout.strip().endswith(
    "--logdir gs://b/run --port 7007 --bind_all"
  )
  assert _run("tensorboard.sh").returncode == 2
  missing = _run("tensorboard.sh", "/no/such/workdir")
  assert missing.returncode == 2 and "does not exist" in missing.stderr
