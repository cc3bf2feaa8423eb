"""The active-learning loop: label a little, train with the one trainer, acquire, repeat.

Round r trains on the labelled set `WORKDIR/round_<r>/labelled.json` through
`keras_unc.training.trainer.train` (its data is the subset source `<dataset>@<that file>`, its outputs
go to `WORKDIR/round_<r>/`), evaluates with the gin-configured `train.evaluators`, scores
the unlabelled pool with the trained network and writes the next round's labelled set. One
JSON line per finished round goes to `WORKDIR/metrics.jsonl` and the accuracy against the
number of labels to TensorBoard (`WORKDIR/active_learning/`, step = labelled-set size).

Resuming: the next labelled set is written before the round's line, so rerunning the same
command skips every round with a line and continues (a round interrupted while training
resumes from its own checkpoint).
"""

import json
import logging
import os

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_unc.active_learning import acquisition
from keras_unc.data import get_source, parse_split
from keras_unc.data.sources import write_subset
from keras_unc.evaluators import Predictor
from keras_unc.runtime import checkpoints
from keras_unc.training import trainer as train_lib

log = logging.getLogger(__name__)

RETRAIN = ("scratch", "finetune")


def read_rounds(workdir):
  """The finished rounds' records from `WORKDIR/metrics.jsonl`, by round."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {r["round"]: r for r in records}


def _round_dir(workdir, r):
  return os.path.join(workdir, f"round_{r:03d}")


def _labelled_path(workdir, r):
  return os.path.join(_round_dir(workdir, r), "labelled.json")


def _read_labelled(workdir, r):
  with open(_labelled_path(workdir, r)) as f:
    return np.asarray(json.load(f)["indices"], np.int64)


def _write_labelled(workdir, r, split, indices):
  os.makedirs(_round_dir(workdir, r), exist_ok=True)
  write_subset(_labelled_path(workdir, r), split, indices)


@gin.configurable(denylist=["workdir"])
def active_learning(
  workdir,
  *,
  dataset=gin.REQUIRED,
  pool_split="train",
  strategy="entropy",
  num_rounds=10,
  initial_size=20,
  initial_selection="balanced",
  acquire_per_round=20,
  noise="none",
  gumbel_scale=0.0,
  retrain="scratch",
  seed=0,
  score_batch_size=512,
  accuracy_key="test/accuracy",
  verbose=1,
):
  """Runs (or resumes) an active-learning experiment in `workdir`.

  Training, the model, its steps per round and the test evaluation come from the usual
  `train.*` gin bindings; `train.dataset` / `train.split` are set here to the labelled set.

  Args:
    workdir: output folder.
    dataset: an in-memory source name (`mnist`, `fashion_mnist`, `digits`).
    pool_split: the split the labelled and unlabelled examples come from, slices allowed
      (`train[:20000]`).
    strategy: acquisition score, one of `acquisition.STRATEGIES`.
    num_rounds: training rounds; the last one acquires nothing.
    initial_size: labelled examples before the first round.
    initial_selection: "balanced" (same count per class) or "random".
    acquire_per_round: examples acquired after each round.
    noise: batch diversity, one of `acquisition.NOISES` ("none" = top-k).
    gumbel_scale: Gumbel noise scale beta (0: exact top-k).
    retrain: "scratch" (fresh initialisation every round) or "finetune" (warm start from
      the previous round's final weights).
    seed: seeds the initial set, uniform scores and Gumbel noise.
    score_batch_size: batch size when predicting the pool.
    accuracy_key: the evaluation metric logged against the number of labels.
    verbose: print one line per round.

  Returns:
    list of the rounds' records (also in `WORKDIR/metrics.jsonl`).
  """
  if strategy not in acquisition.STRATEGIES:
    raise ValueError(
      f"Unknown acquisition strategy {strategy!r}; choose one of "
      f"{', '.join(acquisition.STRATEGIES)} (active_learning.strategy)."
    )
  if noise not in acquisition.NOISES:
    raise ValueError(
      f"Unknown acquisition noise {noise!r}; choose one of "
      f"{', '.join(acquisition.NOISES)} (active_learning.noise)."
    )
  if retrain not in RETRAIN:
    raise ValueError(f"Unknown retrain {retrain!r}; choose one of {', '.join(RETRAIN)}.")
  if num_rounds < 1 or initial_size < 1 or acquire_per_round < 1:
    raise ValueError(
      "active_learning needs num_rounds, initial_size and acquire_per_round "
      f">= 1, got {num_rounds}, {initial_size}, {acquire_per_round}."
    )
  source = get_source(dataset)
  if not source.random_access:
    raise ValueError(f"Active learning needs an in-memory source, {dataset!r} is streamed.")
  split, start, stop = parse_split(pool_split, source.split_sizes)
  pool_size = stop - start
  needed = initial_size + acquire_per_round * (num_rounds - 1)
  if needed > pool_size:
    raise ValueError(
      f"{num_rounds} rounds starting from {initial_size} labels and acquiring "
      f"{acquire_per_round} per round need {needed} examples, but the pool "
      f"{dataset}/{pool_split} has {pool_size}: acquire fewer, run fewer rounds "
      "or enlarge active_learning.pool_split."
    )
  pool_labels = source.arrays(pool_split)[1]
  os.makedirs(workdir, exist_ok=True)
  writer = tf.summary.create_file_writer(os.path.join(workdir, "active_learning"))
  done = read_rounds(workdir)
  if not os.path.exists(_labelled_path(workdir, 0)):
    rng = np.random.default_rng([seed, 0, 0])
    first = acquisition.initial_selection(
      pool_labels, initial_size, mode=initial_selection, rng=rng
    )
    _write_labelled(workdir, 0, split, start + first)

  records = [done[r] for r in sorted(done) if r < num_rounds]
  for r in range(num_rounds):
    if r in done:
      continue
    labelled = _read_labelled(workdir, r)
    rdir = _round_dir(workdir, r)
    warm = None
    if retrain == "finetune" and r > 0:
      prev = checkpoints.Checkpointer(os.path.join(_round_dir(workdir, r - 1), "checkpoints"))
      warm = prev.path(prev.steps()[0])
    keras.backend.clear_session()  # Drop the previous rounds' graphs and layers.
    kwargs = dict(
      dataset=f"{dataset}@{_labelled_path(workdir, r)}",
      split=split,
      warm_start=warm,
      export_at_end=False,
    )
    result = train_lib.train(rdir, "train_and_eval", **kwargs)
    if not result["metrics"]:  # Trained before an interruption: evaluate the final weights.
      result = train_lib.train(rdir, "eval", **kwargs)
    metrics = result["metrics"]
    if accuracy_key not in metrics:
      raise ValueError(
        f"The round's evaluation reported no {accuracy_key!r} (found "
        f"{sorted(metrics)}): add a ClassificationEvaluator to train.evaluators "
        "or set active_learning.accuracy_key."
      )
    acquired = []
    if r + 1 < num_rounds:
      rel = labelled - start
      outputs, _ = Predictor(result["network"], score_batch_size)(dataset, pool_split)
      scores = acquisition.compute_scores(
        strategy,
        outputs,
        rng=np.random.default_rng([seed, r + 1, 0]),
        labelled=rel,
        labelled_labels=pool_labels[rel],
      )
      picked = acquisition.select(
        scores,
        acquire_per_round,
        exclude=rel,
        noise=noise,
        beta=gumbel_scale,
        rng=np.random.default_rng([seed, r + 1, 1]),
      )
      acquired = (start + picked).tolist()
      _write_labelled(workdir, r + 1, split, np.concatenate([labelled, start + picked]))
    record = {
      "round": r,
      "num_labelled": int(len(labelled)),
      "strategy": strategy,
      "accuracy": float(metrics[accuracy_key]),
      "step": int(result["step"]),
      "class_counts": np.bincount(
        pool_labels[labelled - start], minlength=source.num_classes
      ).tolist(),
      "acquired": acquired,
      "metrics": {k: float(v) for k, v in metrics.items() if k != "step"},
    }
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
    with writer.as_default(step=len(labelled)):
      tf.summary.scalar("active_learning/accuracy_vs_labels", record["accuracy"])
      for k, v in record["metrics"].items():
        if np.isfinite(v):
          tf.summary.scalar(f"vs_labels/{k}", v)
    with writer.as_default(step=r):
      tf.summary.scalar("active_learning/num_labelled", len(labelled))
    writer.flush()
    records.append(record)
    if verbose:
      log.info(
        "[active_learning] round %d: %d labels, %s = %.4f",
        r,
        len(labelled),
        accuracy_key,
        record["accuracy"],
      )
  return records
