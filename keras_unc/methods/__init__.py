"""Uncertainty methods, each a composition of backbone modifiers, a head and a loss.

One file per registered method (file name = registry key = `gin_configs/methods/<key>.gin`);
the hybrids share `hybrids.py`; URL's modules and losses live in `url/`.
"""

from keras_unc.methods import heads, modifiers
from keras_unc.methods.base import Method
from keras_unc.methods.batchensemble import BatchEnsemble
from keras_unc.methods.deterministic import Deterministic
from keras_unc.methods.heteroscedastic import Heteroscedastic
from keras_unc.methods.hetxl import HetXL
from keras_unc.methods.hybrids import BESNGP, HetSNGP, Plex
from keras_unc.methods.laplace import Laplace
from keras_unc.methods.mc_dropout import MCDropout
from keras_unc.methods.mimo import MIMO
from keras_unc.methods.packed import Packed
from keras_unc.methods.rank1 import Rank1
from keras_unc.methods.registry import METHODS, get_method, register
from keras_unc.methods.shallow_ensemble import ShallowEnsemble
from keras_unc.methods.sngp import SNGP
from keras_unc.methods.swag import SWAG
from keras_unc.methods.url import URL
from keras_unc.methods.variational import Variational

__all__ = [
  "BESNGP",
  "METHODS",
  "SNGP",
  "SWAG",
  "BatchEnsemble",
  "Deterministic",
  "HetSNGP",
  "HetXL",
  "Laplace",
  "Heteroscedastic",
  "MCDropout",
  "MIMO",
  "Method",
  "Packed",
  "Plex",
  "Rank1",
  "ShallowEnsemble",
  "URL",
  "Variational",
  "get_method",
  "heads",
  "modifiers",
  "register",
  "resolve_method",
]


def resolve_method(method):
  """A `Method` from `train.method`'s forms: a registered name, a `Method`, or None (the
  deterministic baseline).
  """
  if isinstance(method, str):
    return get_method(method)
  return method or Deterministic()
