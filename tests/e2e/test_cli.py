"""The command line: bad gin input fails fast and clearly; warm start initialises a run."""

import subprocess
import sys

import numpy as np

from tests.e2e.helpers import final_model_arrays, max_abs_diff, run_main


def test_unknown_binding_exits_with_close_match(tmp_path):
  proc = run_main(tmp_path, "--gin_param=train.totl_steps=5", check=False)
  assert proc.returncode == 2
  assert "Unknown gin parameter train.totl_steps" in proc.stderr
  assert "Did you mean: total_steps" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()  # Failed before touching the workdir.


def test_warm_start_copies_weights_not_optimizer_state(tmp_path):
  source = tmp_path / "source"
  run_main(
    source,
    "--mode=train",
    "--gin_param=train.total_steps=10",
    "--gin_param=train.checkpoint_every=10",
  )
  _, trained = final_model_arrays(source)
  ckpt = source / "checkpoints" / "ckpt-000000010"
  target = tmp_path / "target"
  # Zero learning rate: the warm-started weights must come through unchanged.
  run_main(
    target,
    "--mode=train",
    "--gin_param=train.total_steps=10",
    "--gin_param=train.checkpoint_every=10",
    f"--gin_param=train.warm_start='{ckpt}'",
    "--gin_param=make_optimizer.learning_rate=0.0",
    "--gin_param=make_optimizer.weight_decay=0.0",
  )
  step, warm = final_model_arrays(target)
  assert step == 10
  assert max_abs_diff(trained, warm) == 0.0
  assert any(np.abs(v).sum() > 0 for v in warm.values())


def _cli(*args, cwd=None):
  return subprocess.run(
    [sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300
  )


def test_help_lists_the_verbs_and_each_verb_its_flags():
  proc = _cli("keras_unc", "--help")
  assert proc.returncode == 0
  for verb in ("train", "eval", "export", "cache", "active-learning"):
    assert f"  {verb} " in proc.stdout
  train = _cli("keras_unc", "train", "--help")
  assert train.returncode == 0
  assert "--gin_file" in train.stdout and "--workdir" in train.stdout and "--mode" in train.stdout
  cache = _cli("keras_unc", "cache", "--help")
  assert "--overwrite" in cache.stdout and "--mode" not in cache.stdout
  legacy = _cli("keras_unc.main", "--help")  # The documented entry point still works.
  assert (
    legacy.returncode == 0 and "--gin_file" in legacy.stdout and "--export_dir" in legacy.stdout
  )


def test_an_unknown_verb_names_the_verbs():
  proc = _cli("keras_unc", "trian", "--workdir=x")
  assert proc.returncode == 2
  assert "unknown verb 'trian'" in proc.stderr and "active-learning" in proc.stderr


def test_the_eval_verb_refuses_another_mode(tmp_path):
  proc = _cli("keras_unc", "eval", f"--workdir={tmp_path}", "--mode=train")
  assert proc.returncode != 0 and "--mode" in proc.stderr
