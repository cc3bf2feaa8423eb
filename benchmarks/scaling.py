"""Trainer throughput with 1 and 2 replicas, their ratio, and peak memory per replica.

Each configuration runs the full keras_unc trainer (`train.train`, distributed input
pipeline and callbacks) in its own subprocess, so device set-up and peak memory are
clean: 1 replica = TensorFlow's default strategy on one device, 2 replicas =
MirroredStrategy over two devices (two GPUs when there are, else two logical CPU devices
made with `tf.config.set_logical_device_configuration`). Same global batch for both.
Throughput is timed between optimizer steps after a warmup (tracing excluded).

Memory per replica: `tf.config.experimental.get_memory_info` peak of each replica's
device. Logical CPU devices share one host allocator, so on CPU that peak is the
process's for all replicas together and is divided by the replica count; where the CPU
allocator keeps no statistics (it reports 0 inside the trainer here), the process's peak
RSS (`resource.getrusage`) divided by the replica count is used instead (the table says
which). On a CPU, two logical devices share the
same cores: the ratio measures distribution overhead, not a speed-up.

  .venv/bin/python benchmarks/scaling.py [--steps 40 --warmup 10 --batch 128]

Last line: {"img_s_1": ..., "img_s_2": ..., "ratio": ..., "peak_mb_per_replica_1": ..., ...}
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _child(args):
  """One configuration; prints one JSON line."""
  import keras
  import tensorflow as tf

  from keras_unc import config
  from keras_unc.runtime import distribute
  from keras_unc.training import trainer as train_lib

  gpus = tf.config.list_physical_devices("GPU")
  use_gpu = len(gpus) >= args.replicas
  if not use_gpu:
    distribute.configure_cpu_devices(args.replicas)
  kind = "GPU" if use_gpu else "CPU"
  devices = [d.name for d in tf.config.list_logical_devices(kind)][: args.replicas]

  class StepTimer(keras.callbacks.Callback):
    def __init__(self):
      super().__init__()
      self.times = []

    def on_train_batch_end(self, batch, logs=None):
      self.times.append(time.perf_counter())

  timer = StepTimer()
  strategy = "'auto'" if args.replicas == 1 else "'mirrored'"
  params = [
    f"train.total_steps={args.steps}",
    f"train.batch_size={args.batch}",
    "train.evaluators=[]",
    "train.export_at_end=False",
    "train.log_every=1000000",
    f"train.checkpoint_every={args.steps}",
    "train.deterministic_ops=False",
    f"get_strategy.name={strategy}",
    *args.gin_param,
  ]
  if args.replicas > 1:
    params.append(f"get_strategy.devices={devices!r}")
  config.parse([args.gin_file], params)
  for d in devices:
    tf.config.experimental.reset_memory_stats(d)
  with tempfile.TemporaryDirectory() as workdir:
    train_lib.train(workdir, "train", callbacks=[timer])
  steps = len(timer.times) - args.warmup
  img_s = steps * args.batch / (timer.times[-1] - timer.times[args.warmup - 1])
  peaks = [tf.config.experimental.get_memory_info(d)["peak"] / 2**20 for d in devices]
  rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.
  if max(peaks) > 0:
    source = f"get_memory_info({kind})"
    # One shared host allocator for logical CPUs: its peak covers every replica.
    per_replica = (max(peaks) / args.replicas) if kind == "CPU" else max(peaks)
  else:  # The CPU allocator kept no statistics in this process: whole-process RSS.
    source, per_replica = "peak RSS / replicas", rss_mb / args.replicas
  print(
    json.dumps(
      {
        "replicas": args.replicas,
        "devices": devices,
        "img_s": img_s,
        "timed_steps": steps,
        "peak_mb_per_replica": per_replica,
        "memory_source": source,
        "allocator_peaks_mb": peaks,
        "peak_rss_mb": rss_mb,
      }
    ),
    flush=True,
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--batch", type=int, default=128, help="global batch size")
  parser.add_argument("--gin_file", default="testing/tiny.gin")
  parser.add_argument("--gin_param", action="append", default=[])
  parser.add_argument("--replicas", type=int, default=0, help=argparse.SUPPRESS)  # Child.
  args = parser.parse_args()
  if args.warmup < 1 or args.steps <= args.warmup:
    parser.error("need 1 <= --warmup < --steps")
  if args.replicas:
    _child(args)
    return
  results = {}
  for replicas in (1, 2):
    cmd = [
      sys.executable,
      os.path.abspath(__file__),
      f"--replicas={replicas}",
      f"--steps={args.steps}",
      f"--warmup={args.warmup}",
      f"--batch={args.batch}",
      f"--gin_file={args.gin_file}",
      *[f"--gin_param={p}" for p in args.gin_param],
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode:
      sys.exit(f"{replicas} replica(s) failed:\n{proc.stdout}\n{proc.stderr}")
    results[replicas] = json.loads(proc.stdout.strip().splitlines()[-1])
    results[replicas]["wall_s"] = time.perf_counter() - t0
  one, two = results[1], results[2]
  print(
    f"keras_unc trainer, {args.gin_file}, global batch {args.batch}, "
    f"{one['timed_steps']} timed steps after {args.warmup} warmup"
  )
  print(
    f"{'replicas':>8}  {'devices':<44}  {'images/s':>9}  {'peak MB/replica':>15}  "
    f"{'peak RSS MB':>11}  {'wall s':>6}"
  )
  for r in (one, two):
    print(
      f"{r['replicas']:>8}  {', '.join(r['devices']):<44}  {r['img_s']:>9.1f}  "
      f"{r['peak_mb_per_replica']:>15.1f}  {r['peak_rss_mb']:>11.0f}  {r['wall_s']:>6.1f}"
    )
  print(f"memory per replica: {two['memory_source']}")
  ratio = two["img_s"] / one["img_s"]
  print(
    f"ratio 2/1 replicas: {ratio:.2f}"
    + (
      "  (logical CPU devices share the same cores: distribution overhead, no speed-up expected)"
      if "CPU" in two["devices"][0]
      else ""
    )
  )
  print(
    json.dumps(
      {
        "img_s_1": round(one["img_s"], 1),
        "img_s_2": round(two["img_s"], 1),
        "ratio": round(ratio, 3),
        "peak_mb_per_replica_1": round(one["peak_mb_per_replica"], 1),
        "peak_mb_per_replica_2": round(two["peak_mb_per_replica"], 1),
        "peak_rss_mb_1": round(one["peak_rss_mb"]),
        "peak_rss_mb_2": round(two["peak_rss_mb"]),
        "memory_source": two["memory_source"],
        "device": two["devices"][0].split(":")[-2].split("/")[-1].upper()
        if "device:" in two["devices"][0]
        else "CPU",
        "global_batch": args.batch,
      }
    )
  )


if __name__ == "__main__":
  main()
