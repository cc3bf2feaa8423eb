"""Transfer protocols that compose the trainer's parts: CAT (`cat.py`) and distillation (`distill.py`).

Importers of public checkpoints live in `keras_unc.backbones.pretrained`; layer-wise freezing and
learning rates in `keras_unc.training.layerwise`.
"""
