"""Active learning on top of the one trainer: `python -m keras_unc active-learning`.

`acquisition` holds the scores (uniform, entropy, margin, MSP, BALD, density) and the
(Gumbel-noised) batch selection; `loop.active_learning` runs the rounds.
"""

from keras_unc.active_learning import acquisition
from keras_unc.active_learning.loop import active_learning, read_rounds

__all__ = ["acquisition", "active_learning", "read_rounds"]
