"""The built wheel is a working package: every gin file inside it, the CLI runs from an empty
folder in a virtual environment that holds the wheel and nothing of the source checkout."""

import glob
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from keras_unc.data import default_data_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  # No build isolation: setuptools comes from this environment, so no download is needed.
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "-q",
      "--no-deps",
      "--no-build-isolation",
      "-w",
      out,
      REPO,
    ],
    check=True,
    capture_output=True,
    cwd=out,
  )
  (path,) = glob.glob(str(out / "keras_unc-*.whl"))
  return path


def test_the_wheel_ships_every_gin_file(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  shipped = {n[len("keras_unc/gin_configs/") :] for n in names if n.endswith(".gin")}
  in_repo = {
    os.path.relpath(p, os.path.join(REPO, "gin_configs"))
    for p in glob.glob(os.path.join(REPO, "gin_configs", "**", "*.gin"), recursive=True)
  }
  assert in_repo and shipped == in_repo
  assert "keras_unc/__main__.py" in names and "keras_unc/cli/main.py" in names
  assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "launch/"))]


def test_a_clean_environment_with_the_wheel_trains_and_exports(wheel, tmp_path):
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
  python = str(venv / "bin" / "python")
  site = subprocess.run(
    [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    check=True,
    capture_output=True,
    text=True,
  ).stdout.strip()
  # The wheel alone, without its dependencies: those (TensorFlow is 600 MB) are shared from
  # this environment's site-packages by a .pth line, which adds the folder but does not run
  # its .pth files, so the editable install of the checkout is not visible.
  subprocess.run(
    [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel],
    check=True,
    capture_output=True,
  )
  with open(os.path.join(site, "zz_shared_dependencies.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  empty = tmp_path / "empty"
  empty.mkdir()
  env = dict(os.environ, KERAS_UNC_DATA_DIR=default_data_dir(), PYTHONPATH="")
  where = subprocess.run(
    [python, "-c", "import keras_unc, keras_unc.config as c; print(keras_unc.__file__, c.GIN_DIR)"],
    cwd=empty,
    env=env,
    check=True,
    capture_output=True,
    text=True,
  ).stdout.split()
  assert all(p.startswith(site) for p in where), where  # The wheel's code and gin files.
  proc = subprocess.run(
    [
      python,
      "-m",
      "keras_unc",
      "train",
      "--gin_file=testing/tiny.gin",
      "--workdir=W",
      "--gin_param=train.total_steps=10",
      "--gin_param=train.eval_every=10",
    ],
    cwd=empty,
    env=env,
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert os.path.exists(empty / "W" / "export" / "saved_model.pb")
  assert "test/accuracy" in proc.stdout
