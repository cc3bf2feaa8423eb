"""MultiWorkerMirroredStrategy, two worker processes on loopback (CPU).

A job that loses a worker (SIGKILL) resumes from the chief's newest checkpoint when
rerun; a SIGTERM on one worker makes both save at the same step
(PreemptionCheckpointHandler) and exit 143; and after both interruptions the job ends on
the weights of one worker on the same global batch (the uninterrupted two-worker job is
this case without the interruptions). Only the chief writes the workdir.
"""

import json
import os
import re
import signal
import time

import pytest

from keras_unc.runtime import preemption
from tests.e2e.helpers import final_model_arrays, max_abs_diff, run_inprocess
from tests.scale.multi_worker import Job

STEPS = 40
# One evaluation at the end: Keras' predict under MultiWorkerMirroredStrategy too.
PARAMS = [
  f"train.total_steps={STEPS}",
  "train.checkpoint_every=5",
  f"train.eval_every={STEPS}",
  "train.evaluators=[@ClassificationEvaluator()]",
  "train.export_at_end=False",
  "train.keep_checkpoints=20",
]
# Two workers' gradients are summed by a collective instead of within one batch: equal
# up to float rounding, not bit-identical.
TOLERANCE = 1e-5
TIMEOUT = 300  # A loaded 2-core machine starts a worker in up to a minute.


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One process, one replica, the same global batch of 32, never interrupted."""
  workdir = tmp_path_factory.mktemp("one_worker")
  metrics = run_inprocess(workdir, "train_and_eval", PARAMS)["metrics"]
  return (*final_model_arrays(workdir), metrics)


def _finish(job):
  codes = job.wait(TIMEOUT)
  if codes != [0, 0]:
    job.kill_all()
  assert codes == [0, 0], (job.output(0), job.output(1))


def _check_result(workdir, reference):
  step, arrays = final_model_arrays(workdir)
  ref_step, ref, ref_metrics = reference
  assert step == ref_step == STEPS
  assert max_abs_diff(arrays, ref) < TOLERANCE
  with open(workdir / "metrics.jsonl") as f:
    metrics = json.loads(f.read().splitlines()[-1])  # Written by the chief alone.
  assert metrics["step"] == STEPS
  assert metrics["test/accuracy"] == pytest.approx(ref_metrics["test/accuracy"], abs=1e-6)
  assert metrics["test/nll"] == pytest.approx(ref_metrics["test/nll"], abs=1e-4)


def _wait_for_checkpoint(job, path):
  deadline = time.monotonic() + TIMEOUT
  while not path.exists() and time.monotonic() < deadline and None in job.wait(0.1):
    pass
  assert path.exists(), (job.output(0), job.output(1))


def _checkpoints(workdir):
  return sorted(os.listdir(workdir / "checkpoints"))


def test_killed_and_preempted_jobs_resume(tmp_path, reference):
  workdir, ckpts = tmp_path / "work", tmp_path / "work" / "checkpoints"
  logs = [tmp_path / f"run{i}" for i in range(3)]
  for log in logs:
    log.mkdir()
  verbose = ["--verbosity=0"]  # absl INFO: "Resumed from ..."

  # 1. SIGKILL of the non-chief worker: the chief's next collective fails (lost
  # heartbeats) and it exits with an error; the newest checkpoint stays valid.
  job = Job(workdir, PARAMS, logs[0], extra_args=verbose)
  _wait_for_checkpoint(job, ckpts / "ckpt-000000005")
  job.kill(1)
  codes = job.wait(120)
  job.kill_all()
  assert codes[0] not in (None, 0) and codes[1] == -signal.SIGKILL, job.output(0)
  killed_at = _checkpoints(workdir)[-1]
  assert killed_at != f"ckpt-{STEPS:09d}", "the job finished before the kill"

  # 2. The job restarts (both workers rerun the same command) and resumes; then SIGTERM
  # on worker 1 alone makes both workers save at one step and exit 143.
  job = Job(workdir, PARAMS, logs[1], extra_args=verbose)
  assert job  # Started.
  newer = ckpts / f"ckpt-{int(killed_at[5:]) + 5:09d}"
  _wait_for_checkpoint(job, newer)
  job.kill(1, signal.SIGTERM)
  codes = job.wait(120)
  job.kill_all()
  assert f"Resumed from {ckpts / killed_at}" in job.output(0)
  assert codes == [preemption.EXIT_CODE] * 2, (job.output(0), job.output(1))
  saved = [re.findall(r"checkpoint of step (\d+) saved to (\S+)\.", job.output(i)) for i in (0, 1)]
  (step0, path0), (step1, path1) = saved[0][-1], saved[1][-1]
  assert step0 == step1 and int(step0) < STEPS  # The same step on every worker...
  assert path0 == str(ckpts / f"ckpt-{int(step0):09d}")  # ... in the workdir on the chief,
  assert not path1.startswith(str(workdir))  # in a scratch folder on worker 1.
  assert _checkpoints(workdir)[-1] == f"ckpt-{int(step0):09d}"

  # 3. Rerun: resumes from the preemption checkpoint and ends on the one-worker weights.
  job = Job(workdir, PARAMS, logs[2], extra_args=verbose)
  _finish(job)
  assert f"Resumed from {ckpts / f'ckpt-{int(step0):09d}'}" in job.output(0)
  # The two-worker job ends on the one-worker weights and metrics (after both
  # interruptions: an uninterrupted two-worker job is the special case without them, and
  # a separate run of it cost 50 s of CI for no behaviour this one does not check).
  _check_result(workdir, reference)
  # Only the chief writes the workdir: every checkpoint is on the 5-step grid but the
  # preemption save, and nothing of worker 1's is in it.
  grid = {f"ckpt-{s:09d}" for s in range(5, STEPS + 1, 5)} | {f"ckpt-{int(step0):09d}"}
  assert set(_checkpoints(workdir)) <= grid and f"ckpt-{STEPS:09d}" in _checkpoints(workdir)
  assert not [n for n in os.listdir(workdir) if "worker" in n]
