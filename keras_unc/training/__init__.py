"""The one trainer and what it assembles: network, train step, optimizer, callbacks, export.

from keras_unc.training import TrainModel, build_network, train
"""

from keras_unc.training.export import export_saved_model
from keras_unc.training.network import build_network
from keras_unc.training.optim import make_optimizer
from keras_unc.training.train_model import TrainModel
from keras_unc.training.trainer import MODES, train

__all__ = ["MODES", "TrainModel", "build_network", "export_saved_model", "make_optimizer", "train"]
