"""The `<name>@<indices.json>` subset source that restricts training to the labelled set."""

import json

import numpy as np
import pytest

from keras_unc.data import get_source, make_dataset
from keras_unc.data.sources import write_subset


def test_subset_selects_indices_and_keeps_other_splits(tmp_path):
  path = write_subset(str(tmp_path / "l.json"), "train", [7, 3, 1499, 3 + 0])
  assert json.loads(open(path).read()) == {"split": "train", "indices": [7, 3, 1499, 3]}
  base, sub = get_source("digits"), get_source(f"digits@{path}")
  x, y = sub.arrays("train")
  bx, by = base.arrays("train")
  np.testing.assert_array_equal(x, bx[[7, 3, 1499, 3]])
  np.testing.assert_array_equal(y, by[[7, 3, 1499, 3]])
  assert sub.num_examples("train") == 4 and sub.num_examples("train[:2]") == 2
  np.testing.assert_array_equal(sub.arrays("test")[1], base.arrays("test")[1])
  assert sub.num_classes == 10 and sub.image_shape == (8, 8, 1)
  # The training stream only ever yields the subset's examples.
  ds = make_dataset(sub, "train", "", 8, train=True, seed=0)
  labels = np.concatenate([b[1].numpy() for b in ds.take(5)])
  assert set(labels.tolist()) <= set(by[[7, 3, 1499]].tolist())


@pytest.mark.parametrize(
  "spec, match",
  [
    ({"split": "train", "indices": [0, 1500]}, r"indices in \[0, 1500\)"),
    ({"split": "valid", "indices": [0]}, r"one of \['test', 'train'\]"),
    ({"split": "train", "indices": [-1]}, r"indices in \[0, 1500\)"),
  ],
)
def test_subset_bad_indices(tmp_path, spec, match):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(spec))
  with pytest.raises(ValueError, match=match):
    get_source(f"digits@{path}")


def test_subset_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing"):
    get_source(f"digits@{tmp_path}/nope.json")
