"""Fault-injection benchmark: SIGKILL one training run many times at random moments.

Trains the tiny config (`gin_configs/testing/tiny.gin`, deterministic ops, CPU) once
uninterrupted as the baseline and once under fire: the run is SIGKILLed `--kills` times,
alternately while a checkpoint is being written (each save pauses mid-write for
`KERAS_UNC_TEST_SAVE_DELAY` s to make that window hittable) and at a random step, and the
same command is rerun after every kill. Every checkpoint on disk is read back in full after
each kill; the final weights are compared with the baseline's.

  python benchmarks/faults.py [--kills 10] [--steps 400] [--method sngp]

Prints a table (one row per kill) and, last, one JSON line:
{"kills": ..., "resumed": ..., "unreadable_checkpoints": 0, "max_abs_diff": 0.0, ...}
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.reliability import harness  # noqa: E402

METHODS = {
  "deterministic": ((), ["vit.dropout=0.1"]),
  "sngp": (("methods/sngp.gin",), ["gp_head.num_inducing=32", "gp_head.reset_every=47"]),
  "batchensemble": (("methods/batchensemble.gin",), ["BatchEnsemble.ensemble_size=2"]),
  "mc_dropout": (("methods/mc_dropout.gin",), ["MCDropout.num_samples=2"]),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--checkpoint_every", type=int, default=10)
  parser.add_argument("--method", default="sngp", choices=sorted(METHODS))
  parser.add_argument(
    "--max_delay",
    type=float,
    default=1.0,
    help="random kills land up to this many seconds after progress",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None)
  args = parser.parse_args()

  extra_gin, extra = METHODS[args.method]
  gin_files = (harness.TINY, *extra_gin)
  params = [
    f"train.total_steps={args.steps}",
    f"train.checkpoint_every={args.checkpoint_every}",
    f"train.eval_every={args.steps}",
    *extra,
  ]
  root = args.workdir or tempfile.mkdtemp(prefix="faults_")
  os.makedirs(root, exist_ok=True)
  t0 = time.time()
  baseline = harness.start(
    os.path.join(root, "baseline"), params, gin_files, log=os.path.join(root, "baseline.log")
  )
  kinds = ["save" if i % 2 == 0 else "step" for i in range(args.kills)]
  result = harness.run_with_kills(
    os.path.join(root, "killed"),
    params,
    kinds,
    gin_files,
    seed=args.seed,
    max_delay=args.max_delay,
    log=os.path.join(root, "killed.log"),
  )
  if baseline.wait(timeout=900) != 0:
    raise SystemExit(f"baseline run failed; see {root}/baseline.log")
  step_ref, ref = harness.final_model(os.path.join(root, "baseline"))
  step_res, res = harness.final_model(os.path.join(root, "killed"))
  diff = harness.max_abs_diff(ref, res)

  print(
    f"\nFault injection: {args.method} on tiny digits, {args.steps} steps, checkpoint every "
    f"{args.checkpoint_every}, workdir {root}"
  )
  print(f"{'kill':>4}  {'moment':<5}  {'where':<52}  {'newest':>6}  {'readable':>8}  {'bad':>3}")
  for kill, kind, where, newest, ok, bad in result["events"]:
    print(f"{kill:>4}  {kind:<5}  {where:<52}  {newest:>6}  {ok:>8}  {bad:>3}")
  print(
    f"final step: baseline {step_ref}, killed run {step_res}; reruns that resumed: "
    f"{result['resumed']}/{result['kills']}; unreadable checkpoints: "
    f"{len(result['unreadable'])}; max |w_killed - w_baseline| = {diff:g}; "
    f"wall {time.time() - t0:.0f} s"
  )
  for line in result["unreadable"]:
    print("UNREADABLE:", line)
  print(
    json.dumps(
      {
        "kills": result["kills"],
        "resumed": result["resumed"],
        "unreadable_checkpoints": len(result["unreadable"]),
        "max_abs_diff": diff,
        "method": args.method,
        "steps": args.steps,
        "final_step": step_res,
        "bit_identical": diff == 0.0,
      }
    )
  )


if __name__ == "__main__":
  main()
