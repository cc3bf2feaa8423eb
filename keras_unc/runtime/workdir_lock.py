"""One run per workdir: an advisory `fcntl.flock` on `WORKDIR/.lock`.

The lock file records the owner's pid, host and start time for the error message, but
what holds the lock is the open file itself: the kernel drops it when the owner exits
in any way (SIGKILL, OOM, a crashed VM's process), so a stale `.lock` file left by a
dead run never blocks the rerun that resumes it. Two live runs on one workdir would
interleave checkpoints and metrics; the second one is refused at start.

Multi-worker jobs lock one file per task (`.lock.worker-1`, ...): the workers of one job
share the workdir, while a second job's chief still collides with the first one's.
"""

import datetime
import fcntl
import json
import os
import socket

_HELD = {}  # realpath of the lock file -> WorkdirLock held by this process.


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirLock:
  """A held lock; `release()` (or process exit) frees it."""

  def __init__(self, path, fd):
    self.path, self._fd = path, fd

  def release(self):
    if self._fd is None:
      return
    _HELD.pop(os.path.realpath(self.path), None)
    try:
      os.ftruncate(self._fd, 0)  # An empty file: nobody holds it.
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


def _lock_name(strategy):
  resolver = getattr(strategy, "cluster_resolver", None)
  task_type = getattr(resolver, "task_type", None)
  if task_type not in ("chief", "worker"):
    return ".lock"  # One process (one device, mirrored, TPU host).
  task_id = resolver.task_id or 0
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  if task_type == "chief" or (task_id == 0 and not has_chief):
    return ".lock"  # The chief, the task that writes checkpoints.
  return f".lock.{task_type}-{task_id}"


def _owner(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def acquire(workdir, strategy=None):
  """Locks `workdir` for this process, or raises `WorkdirLockedError` naming the owner.

  Re-acquiring a workdir this process already holds returns the held lock (in-process
  reruns, tests).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, _lock_name(strategy))
  held = _HELD.get(os.path.realpath(path))
  if held is not None:
    return held
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:  # EWOULDBLOCK / EAGAIN: a live process holds it.
    os.close(fd)
    owner = _owner(path)
    who = (
      (
        f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started "
        f"{owner.get('started', '?')}"
      )
      if owner
      else "another process"
    )
    raise WorkdirLockedError(
      f"Workdir {workdir} is in use by another run ({who}; lock file {path}). Two runs "
      "must never write one workdir. Wait for that run to finish or stop it (then rerun "
      "this command: it resumes from the newest checkpoint), or choose another "
      "--workdir."
    ) from None
  info = {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
  lock = WorkdirLock(path, fd)
  _HELD[os.path.realpath(path)] = lock
  return lock
