"""Launches `python -m keras_unc.main` as a MultiWorkerMirroredStrategy job on loopback."""

import json
import os
import signal
import socket
import subprocess
import time

from tests.e2e.helpers import REPO, main_command


def free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def tf_config(ports, index):
  return json.dumps(
    {
      "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
      "task": {"type": "worker", "index": index},
    }
  )


class Job:
  """`num_workers` worker processes of one job, logs in `log_dir/worker<i>.log`."""

  def __init__(self, workdir, params, log_dir, num_workers=2, extra_args=()):
    ports = free_ports(num_workers)
    self.logs = [os.path.join(log_dir, f"worker{i}.log") for i in range(num_workers)]
    self.procs = []
    for i in range(num_workers):
      env = dict(
        os.environ, TF_CONFIG=tf_config(ports, i), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""
      )
      args = main_command(
        workdir, "--strategy=multi_worker", *[f"--gin_param={p}" for p in params], *extra_args
      )
      with open(self.logs[i], "a") as log:
        self.procs.append(
          subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        )

  def wait(self, timeout):
    """Waits for every worker; returns their exit codes (None: still running)."""
    deadline = time.monotonic() + timeout
    for p in self.procs:
      try:
        p.wait(timeout=max(deadline - time.monotonic(), 0.01))
      except subprocess.TimeoutExpired:
        pass
    return [p.poll() for p in self.procs]

  def kill(self, index, sig=signal.SIGKILL):
    if self.procs[index].poll() is None:
      self.procs[index].send_signal(sig)

  def kill_all(self):
    for i in range(len(self.procs)):
      self.kill(i)
    self.wait(30)

  def output(self, index):
    with open(self.logs[index]) as f:
      return f.read()
