"""The transfer and pretraining recipes carry the published hyperparameters (parsing only).

Sources: big_vision `configs/vit_s16_i1k.py` and `configs/common_fewshot.py`;
uncertainty-baselines `baselines/jft/experiments/vit_base16_finetune_cifar_10_and_100.py`;
RRL (github.com/TjuJianyu/RRL) `supervised.py` defaults and
`scripts/supervised_transfer/imagenet/to_{cifar,inat18}/...` scripts.
"""

import math
import os

import gin
import pytest

from keras_unc import config

IMAGENET_99 = 1268355  # TFDS imagenet2012 train[:99%]


def _parse(path):
  gin.clear_config()
  config.parse([os.path.join(config.GIN_DIR, "experiments", path)], [], finalize=True)


def _q(name):
  return config.value(name)  # The binding, else the Python default.


def _bound(name, default):
  try:
    return gin.query_parameter(name)
  except ValueError:  # Not bound in the recipe: the configurable's default applies.
    return default


def test_big_vision_vit_s16():
  _parse("big_vision/vit_s16_i1k.gin")
  assert (_q("vit.variant"), _q("vit.pooling"), _q("vit.posemb")) == ("S/16", "gap", "sincos2d")
  assert _q("vit.rep_size") is True  # rep_size=True in the config: tanh pre-logits
  assert _q("vit.gelu_approximate") is True  # flax nn.gelu
  assert _q("build_network.image_size") == 224
  assert _q("train.batch_size") == 1024
  assert _q("train.total_steps") == int(90 * IMAGENET_99 / 1024)
  assert _q("train.split") == "train[:99%]"
  pre = _q("train.preprocess").replace(" ", "")
  assert "randaugment(2,10)" in pre and pre.endswith("mixup(0.2)") and "flip_lr" in pre
  assert _q("make_optimizer.name") == "adamw" and _q("make_optimizer.learning_rate") == 1e-3
  # big_vision decays by wd * schedule; Keras AdamW by weight_decay * lr * schedule.
  assert math.isclose(_q("make_optimizer.weight_decay") * _q("make_optimizer.learning_rate"), 1e-4)
  assert _q("make_optimizer.warmup_steps") == 10_000
  assert _q("make_optimizer.decay") == "cosine"
  assert _q("make_optimizer.global_clipnorm") == 1.0
  assert _q("val/ClassificationEvaluator.split") == "validation"
  assert _q("minival/ClassificationEvaluator.split") == "train[99%:]"
  assert _q("ShiftEvaluator.datasets")["v2"][0] == "tfds:imagenet_v2"
  assert _q("SoftLabelEvaluator.dataset") == "tfds:imagenet2012_real"
  assert tuple(_q("FewShotEvaluator.shots")) == (1, 5, 10, 25)
  assert _q("FewShotEvaluator.l2_reg") == 2.0**10
  assert len(_q("FewShotEvaluator.seeds")) == 3


@pytest.mark.parametrize("name,classes", [("vit_b16_cifar10", 10), ("vit_b16_cifar100", 100)])
def test_ub_vit_b16_finetune(name, classes):
  _parse(f"vit_finetune/{name}.gin")
  assert _q("vit.variant") == "B/16" and _q("vit.pooling") == "token"
  assert _q("build_network.image_size") == 384
  assert _q("train.batch_size") == 512 and _q("train.total_steps") == 10_000
  assert _q("make_optimizer.warmup_steps") == 500
  assert _q("make_optimizer.name") == "sgd" and _q("make_optimizer.momentum") == 0.9
  assert _q("make_optimizer.global_clipnorm") == 1.0
  assert _q("make_optimizer.weight_decay") == 0.0
  assert _q("make_optimizer.learning_rate") in (0.03, 0.01, 0.003, 0.001)
  assert _q("train.dataset") == f"tfds:cifar{classes}"
  assert _q("train.split") == "train[:98%]"
  assert _q("val/ClassificationEvaluator.split") == "train[98%:]"
  assert _q("import_weights.keep_head") is False


RRL = {
  # file -> (frozen backbone, BN head, lr, nesterov, steps)
  "rrl/linear_probe": (True, True, 0.01, True, 28 * 50000 // 256),
  "rrl/cat_linear_probe": (True, True, 0.01, True, 28 * 50000 // 256),
  "rrl/finetune": (False, False, 0.01, False, 100 * 50000 // 256),
  "rrl/cat_finetune": (False, False, 0.01, False, 100 * 50000 // 256),
  "rrl/two_stage": (True, False, 0.001, True, 2 * 50000 // 256),
  "rrl/two_stage_inat18": (True, False, 0.001, True, 437513 // 256),
  "rrl/linear_probe_inat18": (True, True, 0.01, True, 28 * 437513 // 256),
}


@pytest.mark.parametrize("name", sorted(RRL))
def test_rrl_protocols(name):
  frozen, bn, lr, nesterov, steps = RRL[name]
  _parse(f"{name}.gin")
  assert _bound("build_network.freeze_backbone", False) is frozen
  assert _bound("Deterministic.head_batchnorm", False) is bn
  assert _q("make_optimizer.learning_rate") == lr
  assert _q("make_optimizer.nesterov") is nesterov
  assert _q("train.total_steps") == steps and _q("train.batch_size") == 256
  assert _q("resnet.depth") == 50 and _q("build_network.image_size") == 224
  if "cat" in name or "two_stage" in name:
    assert _q("build_network.backbone").selector == "cat_backbone"
    assert len(_q("cat_backbone.members")) == 4
  if "two_stage" in name:
    assert _q("Deterministic.head_init").selector == "member_head_kernel"
    assert _q("member_head_kernel.checkpoints") == _q("cat_backbone.checkpoints")
  if "inat18" in name:
    assert _q("train.dataset") == "tfds:i_naturalist2018"


def test_rrl_distill_teacher_is_cat5():
  _parse("rrl/distill_imagenet.gin")
  assert _q("train.method").selector == "Distill"
  assert _q("Distill.teacher") is None
  assert len(_q("teacher/cat_backbone.members")) == 5
  assert _q("teacher/build_network.backbone").selector == "cat_backbone"
  assert _q("teacher/Deterministic.head_init").selector == "member_head_kernel"
  assert _q("train.dataset") == "tfds:imagenet2012"
