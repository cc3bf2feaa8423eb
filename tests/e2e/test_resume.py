"""Crash safety: a run killed with SIGKILL and rerun ends with the same weights as an
uninterrupted run; a corrupted newest checkpoint falls back to the previous one."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.e2e.helpers import REPO, final_model_arrays, main_command, max_abs_diff, run_main

# Long enough (hundreds of steps) that the kill lands mid-run, tiny per step. Dropout on,
# so the restored seed-generator state matters too.
PARAMS = [
  "--mode=train",
  "--gin_param=train.total_steps=600",
  "--gin_param=train.checkpoint_every=20",
  "--gin_param=train.eval_every=600",
  "--gin_param=vit.dropout=0.1",
  "--gin_param=train.preprocess='flip_lr'",
  # Weights are what is compared: no evaluation or export in the three runs.
  "--gin_param=train.evaluators=[]",
  "--gin_param=train.export_at_end=False",
]


def _ckpt_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(
    int(n.split("-")[1])
    for n in os.listdir(path)
    if n.count("-") == 1 and n.startswith("ckpt-") and ".tmp" not in n
  )


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  run_main(reference, *PARAMS)
  proc = subprocess.Popen(
    main_command(killed, *PARAMS), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 300
  while time.time() < deadline and not any(s >= 60 for s in _ckpt_steps(killed)):
    assert proc.poll() is None, "training finished before it could be killed"
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  at_kill = _ckpt_steps(killed)
  assert at_kill and max(at_kill) < 600, f"kill did not land mid-run: {at_kill}"
  run_main(killed, *PARAMS)  # The same command resumes.
  step_ref, ref = final_model_arrays(reference)
  step_res, res = final_model_arrays(killed)
  assert step_ref == step_res == 600
  assert max_abs_diff(ref, res) == 0.0  # Bit-identical on CPU with deterministic ops.


def test_corrupted_newest_checkpoint_falls_back(tmp_path):
  params = [
    "--mode=train",
    "--gin_param=train.total_steps=20",
    "--gin_param=train.checkpoint_every=10",
    "--gin_param=train.evaluators=[]",  # The eval run below evaluates.
    "--gin_param=train.export_at_end=False",
  ]
  run_main(tmp_path, *params)
  newest = tmp_path / "checkpoints" / "ckpt-000000020" / "variables.npz"
  newest.write_bytes(newest.read_bytes()[:100])  # Truncated, as after a disk failure.
  proc = run_main(tmp_path, "--mode=eval", check=True)
  out = proc.stdout + proc.stderr
  assert "ckpt-000000020 is unreadable" in out and "falling back" in out
  assert "step  " in proc.stdout and " 10\n" in proc.stdout  # Evaluated the step-10 one.
  assert newest.exists()  # Kept for inspection, nothing deleted.


def test_nonfinite_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
  proc = run_main(
    tmp_path,
    "--mode=train",
    "--gin_param=train.total_steps=40",
    "--gin_param=train.checkpoint_every=10",
    "--gin_param=make_optimizer.name='sgd'",
    "--gin_param=make_optimizer.learning_rate=1e30",
    "--gin_param=make_optimizer.weight_decay=0.0",
    check=False,
  )
  assert proc.returncode != 0
  assert "Non-finite training" in proc.stderr and "at step" in proc.stderr
  assert not (tmp_path / "export").exists()
  for name in os.listdir(tmp_path / "checkpoints"):  # What was saved is finite.
    with np.load(tmp_path / "checkpoints" / name / "variables.npz") as z:
      assert all(np.all(np.isfinite(z[k])) for k in z.files if z[k].dtype.kind == "f")


@pytest.mark.parametrize("mode", ["eval", "export"])
def test_eval_or_export_without_checkpoint_is_clear(tmp_path, mode):
  proc = run_main(tmp_path, f"--mode={mode}", check=False)
  assert proc.returncode != 0
  assert "needs a trained checkpoint" in proc.stderr and "--mode=train" in proc.stderr
