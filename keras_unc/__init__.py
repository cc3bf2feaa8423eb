"""keras_unc: pretrain, finetune and evaluate uncertainty-aware image models (TF + Keras 3)."""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
