"""Fault injection: run `python -m keras_unc.main` in a subprocess, SIGKILL it at random
moments (some while a checkpoint is being written), rerun the same command until it
finishes, and audit every checkpoint. Shared by `tests/reliability` and
`benchmarks/faults.py`.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from keras_unc.runtime import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "testing/tiny.gin"
SAVE_DELAY_S = 0.25  # Each save pauses this long mid-write (KERAS_UNC_TEST_SAVE_DELAY).


def command(workdir, params, gin_files=(TINY,)):
  return (
    [
      sys.executable,
      "-m",
      "keras_unc.main",
      "--mode=train",
      f"--workdir={workdir}",
      "--verbosity=0",
    ]  # INFO: the "Resumed from" line proves each rerun resumed.
    + [f"--gin_file={g}" for g in gin_files]
    + [f"--gin_param={p}" for p in params]
  )


def start(workdir, params, gin_files=(TINY,), log=None):
  env = dict(
    os.environ,
    KERAS_UNC_TEST_SAVE_DELAY=str(SAVE_DELAY_S),
    PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  out = open(log, "a") if log else subprocess.DEVNULL
  return subprocess.Popen(
    command(workdir, params, gin_files), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
  )


def _names(workdir):
  path = os.path.join(workdir, "checkpoints")
  return os.listdir(path) if os.path.isdir(path) else []


def complete_steps(workdir):
  return sorted(int(n[5:]) for n in _names(workdir) if n.startswith("ckpt-") and n[5:].isdigit())


def saving(workdir):
  return any(".tmp-" in n and ".tmp-old" not in n and ".tmp-del" not in n for n in _names(workdir))


def audit(workdir):
  """(readable, unreadable) complete checkpoint folders; reads each one fully."""
  ok, bad = 0, []
  for step in complete_steps(workdir):
    path = os.path.join(workdir, "checkpoints", f"ckpt-{step:09d}")
    try:
      checkpoints.read(path)
      ok += 1
    except Exception as e:
      bad.append(f"{path}: {type(e).__name__}: {e}")
  return ok, bad


def kill_once(proc, workdir, kind, rng, max_delay=1.0, timeout=300):
  """Waits for this attempt to make progress, then SIGKILLs `proc`.

  kind "save": while a checkpoint write is in flight (after at least one new complete
  checkpoint, so every attempt advances). kind "step": a uniformly random delay in
  [0, max_delay] s after the first new complete checkpoint, i.e. at a random step.
  Returns where the kill landed, or None if the run finished first.
  """
  begin = set(complete_steps(workdir))
  deadline = time.time() + timeout
  delay = rng.uniform(0, max_delay)
  progressed_at = None
  while time.time() < deadline:
    if proc.poll() is not None:
      return None
    if progressed_at is None and set(complete_steps(workdir)) - begin:
      progressed_at = time.time()
    if progressed_at is not None and (
      saving(workdir) if kind == "save" else time.time() - progressed_at >= delay
    ):
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
      newest = max(complete_steps(workdir), default=0)
      return (
        f"during a save (newest complete: step {newest})"
        if kind == "save"
        else f"{delay:.2f} s after progress (newest complete: step {newest})"
      )
    time.sleep(0.002)
  proc.kill()
  raise TimeoutError(f"no progress in {workdir} within {timeout} s")


def run_with_kills(workdir, params, kinds, gin_files=(TINY,), seed=0, log=None, max_delay=1.0):
  """Runs to completion with one SIGKILL per entry of `kinds` ("save" / "step").

  Returns a dict: kills, resumed (reruns that logged "Resumed from"), unreadable
  (list of unreadable checkpoints seen after any kill), events (one line per kill).
  """
  rng = random.Random(seed)
  log = log or os.path.join(str(workdir) + ".log")
  events, unreadable, kills = [], [], 0
  for kind in kinds:
    proc = start(workdir, params, gin_files, log)
    where = kill_once(proc, workdir, kind, rng, max_delay)
    if where is None:
      break  # Finished before the kill: nothing left to interrupt.
    kills += 1
    ok, bad = audit(workdir)
    unreadable += bad
    events.append((kills, kind, where, max(complete_steps(workdir), default=0), ok, len(bad)))
  proc = start(workdir, params, gin_files, log)
  if proc.wait(timeout=600) != 0:
    raise RuntimeError(f"final rerun failed ({proc.returncode}); see {log}")
  _, bad = audit(workdir)
  unreadable += bad
  with open(log) as f:
    resumed = f.read().count("Resumed from")
  return {
    "kills": kills,
    "resumed": resumed,
    "unreadable": unreadable,
    "events": events,
    "log": log,
  }


def final_model(workdir):
  step, arrays, _ = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints")).load_latest()
  return step, {k: v for k, v in arrays.items() if k.startswith("model/")}


def max_abs_diff(a, b):
  assert a.keys() == b.keys(), "different variables"
  return max(
    (float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0) for k in a
  )
