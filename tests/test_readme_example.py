"""The Python example of README.md ("## Python") runs as written and does what it says."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_example():
  text = open(README).read()
  section = text.split("\n## Python", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
  assert blocks, "README.md has no ```python block under '## Python'"
  return blocks[0]


def test_readme_python_example_runs():
  scope = {}
  exec(compile(readme_example(), "README.md (## Python)", "exec"), scope)  # noqa: S102
  probs, uncertainty, labels = scope["probs"], scope["uncertainty"], scope["y_test"]
  assert probs.shape == (len(labels), 10) and uncertainty.shape == (len(labels),)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  correct = probs.argmax(-1) == labels
  assert correct.mean() > 0.6, correct.mean()  # 10 classes: chance is 0.1.
  # What the example promises: the model is less sure where it is wrong.
  assert uncertainty[~correct].mean() > uncertainty[correct].mean()
