"""SIGKILL at random moments (one kill while a checkpoint is being written, one at a random
step), rerun the same command until done: every checkpoint stays readable, every rerun
resumes, and the final weights equal an uninterrupted run's bit for bit (CPU, deterministic
ops). Method extra state: BE-SNGP carries BatchEnsemble fast weights, the SNGP precision
matrix (reset between the kills) and spectral-norm vectors, with backbone dropout RNG; MC
dropout's head RNG. The deterministic model is covered by tests/e2e/test_resume.py, SIGTERM
by test_preemption.py, and ten kills in one run by benchmarks/faults.py.
"""

import pytest

from tests.reliability import harness

COMMON = [
  "train.total_steps=80",
  "train.checkpoint_every=10",
  "train.eval_every=80",
  "train.evaluators=[]",  # Weights are what is compared: no evaluation or export.
  "train.export_at_end=False",
]
METHODS = {
  "be_sngp": (
    "methods/be_sngp.gin",
    [
      "ensemble.ensemble_size=2",
      "gp_head.num_inducing=32",
      "gp_head.reset_every=25",
      "vit.dropout=0.1",
    ],
  ),
  "mc_dropout": ("methods/mc_dropout.gin", ["MCDropout.num_samples=2", "MCDropout.rate=0.3"]),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sigkill_anywhere_resumes_bit_identical(method, tmp_path):
  gin_file, extra = METHODS[method]
  gin_files, params = (harness.TINY, gin_file), COMMON + extra
  # The uninterrupted reference runs alongside the killed run (2 processes).
  reference = harness.start(tmp_path / "reference", params, gin_files)
  result = harness.run_with_kills(
    tmp_path / "killed",
    params,
    ["save", "step"],
    gin_files,
    seed=sorted(METHODS).index(method),
    max_delay=0.5,
  )
  assert reference.wait(timeout=600) == 0
  assert result["kills"] == 2, result["events"]
  assert result["resumed"] == 2, f"a rerun did not resume; see {result['log']}"
  assert result["unreadable"] == []
  step_ref, ref = harness.final_model(tmp_path / "reference")
  step_res, res = harness.final_model(tmp_path / "killed")
  assert step_ref == step_res == 80
  assert harness.max_abs_diff(ref, res) == 0.0
