"""Registers every gin configurable of keras_unc: importing a module is what registers its
`@gin.configurable` names, so this imports the top of the stack (only `cli/` may).
"""


def register_configurables() -> None:
  from keras_unc import active_learning, backbones, evaluators, methods  # noqa: F401
  from keras_unc.backbones.pretrained import init_from  # noqa: F401
  from keras_unc.training import (  # noqa: F401
    calibrate,
    ensemble,
    feature_cache,  # noqa: F401
    layerwise,
    trainer,
  )
  from keras_unc.transfer import cat, distill  # noqa: F401
