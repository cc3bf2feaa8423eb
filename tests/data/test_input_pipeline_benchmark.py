"""benchmarks/input_pipeline.py in its --quick mode: the last-line JSON, both pipelines giving
the same shapes, dtypes and value ranges at every stage, and the same pixels where no seed is
involved (`decode(3)|central_crop|value_range`): the hand-written `tf.data` baseline computes what
keras_unc computes, so the throughput ratio compares like with like.
"""

import contextlib
import importlib.util
import io
import json
import os

import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("PIL")

_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "benchmarks",
  "input_pipeline.py",
)
_spec = importlib.util.spec_from_file_location("input_pipeline_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  """The quick run's printed lines and its last-line JSON (one run for every test)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    bench.main(["--quick", "--data_dir", str(tmp_path_factory.mktemp("jpeg"))])
  lines = out.getvalue().strip().splitlines()
  return lines, json.loads(lines[-1])


def test_last_line_is_the_json_summary(quick):
  lines, result = quick
  keys = {"images_per_s", "ratio", "cpu_ms_per_image", "cpu_ratio", "stages", "outputs"}
  assert keys | {"same_outputs", "cpu_count", "batch", "n_images"} <= set(result)
  assert list(result["stages"]) == ["decode", "decode+crop+flip", "+value_range"]  # Quick: 3.
  for stage in result["stages"].values():
    for key in ("images_per_s", "cpu_ms_per_image"):
      assert set(stage[key]) == {"plain", "keras_unc"} and min(stage[key].values()) > 0
  last = result["stages"]["+value_range"]
  assert result["images_per_s"] == last["images_per_s"]
  ips = result["images_per_s"]
  assert result["ratio"] == pytest.approx(ips["keras_unc"] / ips["plain"], rel=1e-2)
  assert result["spec"] == last["spec"]
  assert result["spec"].startswith("decode(3)|inception_crop(32)|flip_lr|randaugment(")
  assert result["spec"].endswith("|value_range(-1, 1)")
  assert any(line.startswith("+value_range") for line in lines)  # The table.


def test_both_pipelines_give_the_same_shapes_dtypes_and_ranges(quick):
  _, result = quick
  want = {
    "decode": ("uint8", 0, 255),
    "decode+crop+flip": ("float32", 0, 255),
    "+value_range": ("float32", -1, 1),
  }
  for stage, (dtype, lo, hi) in want.items():
    plain, ours = (result["outputs"][stage][p] for p in ("plain", "keras_unc"))
    assert plain["shape"] == ours["shape"] == [4, 32, 32, 3], stage
    assert plain["dtype"] == ours["dtype"] == dtype, stage
    for out in (plain, ours):
      assert lo <= out["min"] < out["max"] <= hi, (stage, out)


def test_seed_free_ops_give_identical_pixels(quick):
  """decode(3)|central_crop|value_range: keras_unc and the plain tf.image code agree exactly."""
  _, result = quick
  check = result["same_outputs"]
  assert check["spec"] == "decode(3)|central_crop(32)|value_range(-1, 1)"
  assert check["max_abs_diff"] == 0.0 and check["equal"]
