"""Two runs never write one workdir: a `flock` on WORKDIR/.lock, freed by the kernel when
its owner dies (a SIGKILLed run's stale lock file never blocks the resume)."""

import os
import signal
import socket
import subprocess
import sys
import types

import pytest

from keras_unc.runtime import workdir_lock
from tests.e2e.helpers import REPO

_HOLD = (
  "import sys, time; from keras_unc.runtime import workdir_lock; "
  "workdir_lock.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(60)"
)


def _holder(workdir):
  """A live process holding `workdir`'s lock (TF-free: starts in well under a second)."""
  proc = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_live_run_is_refused_with_owner_and_fix(tmp_path):
  proc = _holder(tmp_path)
  try:
    with pytest.raises(workdir_lock.WorkdirLockedError) as e:
      workdir_lock.acquire(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg
    assert "another --workdir" in msg and "resumes" in msg
  finally:
    proc.kill()
    proc.wait()


def test_stale_lock_of_a_killed_run_does_not_block(tmp_path):
  proc = _holder(tmp_path)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert str(proc.pid) in (tmp_path / ".lock").read_text()  # The stale file is still there...
  lock = workdir_lock.acquire(str(tmp_path))  # ...and does not block the rerun.
  assert str(os.getpid()) in (tmp_path / ".lock").read_text()
  lock.release()
  assert workdir_lock.acquire(str(tmp_path)) is not lock  # Released: a fresh acquire works.
  workdir_lock._HELD.clear()


def test_reacquire_in_same_process_returns_held_lock(tmp_path):
  first = workdir_lock.acquire(str(tmp_path))
  assert workdir_lock.acquire(str(tmp_path)) is first
  first.release()


def _multi_worker(task_type, task_id, cluster):
  spec = types.SimpleNamespace(as_dict=lambda: cluster)
  resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id, cluster_spec=lambda: spec)
  return types.SimpleNamespace(cluster_resolver=resolver)


def test_multi_worker_tasks_lock_their_own_file():
  workers = {"worker": ["a:1", "b:2"]}
  name = workdir_lock._lock_name
  assert name(None) == ".lock"
  assert name(_multi_worker("worker", 0, workers)) == ".lock"  # The chief collides with
  assert name(_multi_worker("worker", 1, workers)) == ".lock.worker-1"  # another job's.
  assert name(_multi_worker("chief", 0, {"chief": ["a:1"], **workers})) == ".lock"
  assert name(_multi_worker("worker", 0, {"chief": ["a:1"], **workers})) == ".lock.worker-0"
