"""`python -m keras_unc.main --gin_file=X.gin --workdir=DIR [--mode=...]`: the documented
entry point of the trainer, kept as it always was; the same as `python -m keras_unc train`
with `--mode` taking every mode (train, eval, train_and_eval, export).
"""

import sys

from keras_unc.cli import train
from keras_unc.cli.main import run_verb

if __name__ == "__main__":
  run_verb(train, {}, ["python -m keras_unc.main", *sys.argv[1:]])
