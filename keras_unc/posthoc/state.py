"""The post-hoc state of a workdir, `WORKDIR/posthoc/`: what `calibrate` fitted, on disk.

    posthoc/manifest.json        checkpoint (path, step, sha256 of its variables), the data
                                 fitted on, and the components in application order
                                 (kind, name, config, state file)
    posthoc/<i>-<kind>-<name>.npz   each component's fitted arrays

The folder is written whole under a temporary name and swapped in (`runtime.files`), so a
killed `calibrate` leaves the previous state or the new one. Loading reads JSON and `.npz`
files with `allow_pickle=False` and rebuilds components by registry key: a post-hoc state
from elsewhere is data, never code. A state whose checkpoint is not the one being served is
refused (`StalePosthocError`), like a stale feature cache.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from keras_unc.posthoc import base
from keras_unc.runtime import files

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ORDER = ("detector", "calibrator", "conformal")  # Detectors see the network's own outputs.


class StalePosthocError(ValueError):
  """A post-hoc state was fitted on another checkpoint than the one in use."""


class PosthocStateError(ValueError):
  """A post-hoc folder is unreadable or malformed (it is left as it is)."""


def ordered(components):
  """Components in application order: detectors, then the calibrator, then conformal sets
  (which read the calibrated `probs`). Refuses two components of one kind.
  """
  seen = {}
  for c in components:
    if c.kind in seen:
      raise ValueError(
        f"Two post-hoc {c.kind}s ({seen[c.kind]!r} and {c.name!r}): configure one of each kind."
      )
    seen[c.kind] = c.name
  return sorted(components, key=lambda c: ORDER.index(c.kind))


def apply(components, outputs):
  """The output dict with every component applied in order (NumPy)."""
  out = dict(outputs)
  for c in ordered(components):
    out.update(c.apply(out))
  return out


def save(directory, components, manifest):
  """Writes `components` (fitted) and `manifest` (checkpoint and data info) to `directory`
  atomically, replacing an older state. Returns the folder.
  """
  components = ordered(components)
  files.remove_leftovers(directory)
  tmp = files.tmp_path(directory)
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  entries = []
  try:
    for i, c in enumerate(components):
      c._check_fitted()
      name = f"{i}-{c.kind}-{c.name}.npz"
      arrays = {k: np.asarray(v) for k, v in c.state().items()}
      with open(os.path.join(tmp, name), "wb") as f:
        np.savez(f, **arrays)
      entries.append({"kind": c.kind, "name": c.name, "config": c.get_config(), "file": name})
    full = {**manifest, "format_version": FORMAT_VERSION, "components": entries}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
      json.dump(full, f, indent=1, default=_json_default)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return files.replace_dir(tmp, directory)


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r}")


def read_manifest(directory):
  """The manifest dict of a post-hoc folder (clear errors for a missing or bad one)."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"No post-hoc state in {directory!r} (no {MANIFEST}): run "
      "`python -m keras_unc calibrate --workdir=WORKDIR` first."
    )
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise PosthocStateError(
      f"{path} is unreadable ({type(e).__name__}: {e}): rerun `python -m keras_unc "
      "calibrate` to fit a new post-hoc state."
    ) from e
  if manifest.get("format_version") != FORMAT_VERSION or "components" not in manifest:
    raise PosthocStateError(
      f"{path} is not a keras_unc post-hoc manifest of format {FORMAT_VERSION}: rerun "
      "`python -m keras_unc calibrate` to fit a new post-hoc state."
    )
  return manifest


def check_fresh(manifest, checkpoint, directory=""):
  """Refuses a state fitted on another checkpoint than `checkpoint` ({"path", "step",
  "sha256"}), naming both.
  """
  fitted = manifest.get("checkpoint", {})
  if fitted.get("sha256") != checkpoint.get("sha256"):
    raise StalePosthocError(
      f"The post-hoc state {directory or ''} was fitted on checkpoint step "
      f"{fitted.get('step')} ({fitted.get('path')}), but the model now is step "
      f"{checkpoint.get('step')} ({checkpoint.get('path')}): its calibration no longer "
      "holds. Rerun `python -m keras_unc calibrate --workdir=WORKDIR` (or delete "
      f"{directory or 'WORKDIR/posthoc'} to serve the model without it)."
    )


def load(directory, checkpoint=None):
  """`(components in order, manifest)` of a post-hoc folder; with `checkpoint` (its info
  dict), a state fitted on another checkpoint is refused.
  """
  manifest = read_manifest(directory)
  if checkpoint is not None:
    check_fresh(manifest, checkpoint, directory)
  components = []
  for entry in manifest["components"]:
    cls = base.get(entry["kind"], entry["name"])
    path = os.path.join(directory, os.path.basename(entry["file"]))
    try:
      with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
      raise PosthocStateError(
        f"Post-hoc state file {path} is unreadable ({type(e).__name__}: {e}): rerun "
        "`python -m keras_unc calibrate`."
      ) from e
    components.append(cls(**entry["config"]).load_state(arrays))
  return ordered(components), manifest
