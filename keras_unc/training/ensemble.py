"""Deep ensembles of independently trained runs (Lakshminarayanan et al. 2017), served as one
network.

    python -m keras_unc ensemble --members=DIR1,DIR2,DIR3 --workdir=OUT [--gin_file=...]

Every member is a training workdir of the same architecture and method (checked on their
checkpoints before anything is built: the first difference is named). The ensemble is one
Keras model whose outputs keep the output convention: `logits [B, sum_k M_k, C]` (the
members' member axes side by side, so an ensemble of BatchEnsembles is a larger ensemble),
`probs` = the mean of the members' `probs` (each member's own predictive: for SNGP or
heteroscedastic members that is their mean-field or Monte Carlo predictive, not a softmax of
the stacked logits), `uncertainty` = the method's score (msp or entropy) of that mean, and
`embedding` = the members' embeddings concatenated (`[B, sum_k D_k]`): independently
trained members have unrelated feature spaces, so their mean would mean nothing.
It is evaluated with `train.evaluators` and exported to `OUT/export` as one SavedModel.
"""

from __future__ import annotations

import json
import logging
import os

import gin
import tensorflow as tf

from keras_unc import config
from keras_unc.evaluators import Predictor
from keras_unc.evaluators.runner import run_round
from keras_unc.layers import gaussian_process
from keras_unc.runtime import checkpoints, files
from keras_unc.training import export as export_lib
from keras_unc.training import feature_cache, restore
from keras_unc.training.deep_ensemble import DeepEnsemble

log = logging.getLogger(__name__)

MANIFEST = "ensemble.json"


class EnsembleMismatchError(ValueError):
  """Ensemble members differ in architecture, method or training data."""


def _binding(workdir, name):
  path = os.path.join(workdir, "config.gin")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return feature_cache._training_run_binding(f.read(), name)


def check_members(members):
  """Refuses members that are not the same architecture and method, naming the first
  difference; returns their newest checkpoint folders.
  """
  if len(members) < 2:
    raise ValueError(f"A deep ensemble needs at least 2 members, got {len(members)}.")
  found = []
  for workdir in members:
    path = checkpoints.resolve(workdir)
    found.append((workdir, path, _meta(path)))
  first_dir, first_path, first = found[0]
  for workdir, path, meta in found[1:]:
    where = f"member {workdir!r} differs from member {first_dir!r}"
    if meta.get("method") != first.get("method"):
      raise EnsembleMismatchError(
        f"{where}: method {meta.get('method')!r} vs {first.get('method')!r}. Members must be "
        "runs of one method and architecture (different seeds)."
      )
    if _binding(workdir, "dataset") != _binding(first_dir, "dataset"):
      raise EnsembleMismatchError(
        f"{where}: train.dataset {_binding(workdir, 'dataset')!r} vs "
        f"{_binding(first_dir, 'dataset')!r}."
      )
    a, b = first.get("variables", []), meta.get("variables", [])
    for i, (x, y) in enumerate(zip(a, b)):
      if list(x) != list(y):
        raise EnsembleMismatchError(
          f"{where}: variable #{i} is {y[0]} {tuple(y[1])} in {path}, but {x[0]} "
          f"{tuple(x[1])} in {first_path}. Members must share the architecture (same gin "
          "config, different train.seed)."
        )
    if len(a) != len(b):
      raise EnsembleMismatchError(
        f"{where}: {len(b)} variables vs {len(a)} (e.g. "
        f"{(b[len(a)] if len(b) > len(a) else a[len(b)])[0]} is only in one of them)."
      )
  return [path for _, path, _ in found]


def _meta(path):
  with open(os.path.join(path, "meta.json")) as f:
    return json.load(f)


@gin.configurable(denylist=["members", "workdir"])
def build_ensemble(members, workdir, *, evaluators=None, export=True, batch_size=None):
  """Builds, evaluates and exports the deep ensemble of `members` (training workdirs) in
  `workdir` under the parsed gin config (the CLI parses the first member's `config.gin`).

  Args:
    members: training workdirs (at least 2) of one architecture and method.
    workdir: output folder (`metrics.jsonl`, `ensemble.json`, `export/`).
    evaluators: evaluators (default `train.evaluators`).
    export: write `workdir/export`.
    batch_size: evaluation batch size (default `train.eval_batch_size`).

  Returns:
    `{"step", "metrics", "export", "network"}`.
  """
  paths = check_members(list(members))
  os.makedirs(workdir, exist_ok=True)
  networks, infos, method = [], [], None
  for path in paths:
    network, method, info = restore.restore_network(os.path.dirname(os.path.dirname(path)), path)
    networks.append(restore.served_network(network))  # SWA/EMA/SWAG: the served model.
    infos.append(info)
  ensemble = DeepEnsemble(networks, method.uncertainty, name=f"deep_ensemble_{len(networks)}")
  image_shape = tuple(networks[0].inputs[0].shape[1:])
  ensemble(tf.zeros([1, *image_shape]))  # Builds it.
  files.write_json(
    os.path.join(workdir, MANIFEST),
    {"members": [os.path.abspath(m) for m in members], "checkpoints": infos, "method": method.name},
    indent=1,
  )
  evaluators = list(config.query("train.evaluators", ()) if evaluators is None else evaluators)
  found = {}
  if evaluators:
    gaussian_process.refresh_covariance_caches(ensemble)  # GP members: one solve each.
    predictor = Predictor(ensemble, batch_size or config.value("train.eval_batch_size"))
    writer = tf.summary.create_file_writer(os.path.join(workdir, "eval"))
    found = run_round(evaluators, predictor, workdir, writer, 0)
    writer.flush()
  export_path = None
  if export:
    export_path = export_lib.export_saved_model(
      ensemble, os.path.join(workdir, "export"), image_shape
    )
  return {"step": 0, "metrics": found, "export": export_path, "network": ensemble}
