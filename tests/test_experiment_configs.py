"""Every gin file parses; the experiment recipes carry the published hyperparameters.

Parsing only (plus constructing the cheap pieces the recipes name: the method object, the
optimizer and the evaluators, and parsing their preprocessing op strings); no network is
built, so this stays fast.

Published values: google/uncertainty-baselines `baselines/imagenet/{deterministic,
batchensemble,sngp,heteroscedastic,dropout,hetsngp,sngp_batchensemble}.py` (flags) and
`baselines/jft/experiments/vit_l32_plex_finetune.py` + `sweep_utils.py` (Plex).
"""

import glob
import math
import os

import gin
import pytest

from keras_unc import config
from keras_unc.data.ops import parse_ops
from keras_unc.training import optim

GIN_DIR = config.GIN_DIR
ALL_GIN_FILES = sorted(
  os.path.relpath(p, GIN_DIR)
  for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True)
)
IMAGENET_TRAIN_IMAGES = 1281167  # ub: APPROX_IMAGENET_TRAIN_IMAGES


def _parse(path):
  gin.clear_config()
  config.parse([os.path.join(GIN_DIR, path)], [], finalize=True)


def _q(name):
  return config.value(name)  # The binding, else the Python default.


def _method_name():
  return _q("train.method").selector


def test_found_the_gin_files():
  assert "base.gin" in ALL_GIN_FILES
  assert any(p.startswith("experiments" + os.sep) for p in ALL_GIN_FILES)


@pytest.mark.parametrize("path", ALL_GIN_FILES)
def test_every_gin_file_parses(path):
  _parse(path)
  gin.clear_config()


# --- uncertainty-baselines ImageNet ResNet-50 -------------------------------------------

# file -> (method, published ub flags). `batch` is the number of images per step
# (per_core_batch_size [// ensemble_size] x 32 cores), `base_lr` ub's base_learning_rate
# per 256 images, `epochs` train_epochs, `warmup_epochs` the linear warmup.
UB = {
  "deterministic": ("Deterministic", dict(batch=4096, base_lr=0.1, epochs=90, warmup_epochs=5)),
  "batchensemble": ("BatchEnsemble", dict(batch=1024, base_lr=0.1, epochs=135, warmup_epochs=5)),
  "sngp": ("SNGP", dict(batch=4096, base_lr=0.1, epochs=90, warmup_epochs=5)),
  "heteroscedastic": (
    "Heteroscedastic",
    dict(batch=4096, base_lr=0.1, epochs=180, warmup_epochs=5),
  ),
  "mc_dropout": ("MCDropout", dict(batch=4096, base_lr=0.05, epochs=200, warmup_epochs=5)),
  "hetsngp": ("HetSNGP", dict(batch=4096, base_lr=0.07, epochs=270, warmup_epochs=5)),
  "be_sngp": ("BESNGP", dict(batch=1024, base_lr=0.1, epochs=135, warmup_epochs=5)),
}


def _ub_path(name):
  return os.path.join("experiments", "ub_imagenet", f"{name}.gin")


@pytest.mark.parametrize("name", sorted(UB))
def test_ub_imagenet_schedule_and_data(name):
  method, flags = UB[name]
  _parse(_ub_path(name))
  assert _method_name() == method
  batch = flags["batch"]
  steps_per_epoch = IMAGENET_TRAIN_IMAGES // batch
  assert _q("train.batch_size") == batch
  assert _q("train.total_steps") == flags["epochs"] * steps_per_epoch
  assert _q("make_optimizer.warmup_steps") == flags["warmup_epochs"] * steps_per_epoch
  assert math.isclose(_q("make_optimizer.learning_rate"), flags["base_lr"] * batch / 256)
  assert _q("train.recipe_global_batch") == batch and _q("train.recipe_lr_scaling") == "linear"
  # WarmUpPiecewiseConstantSchedule: x0.1 at epochs (train_epochs * [30, 60, 80]) // 90.
  assert _q("make_optimizer.decay") == "step" and _q("make_optimizer.decay_ratio") == 0.1
  assert tuple(_q("make_optimizer.decay_boundaries")) == tuple(
    (flags["epochs"] * e) // 90 * steps_per_epoch for e in (30, 60, 80)
  )
  # SGD, momentum 1 - one_minus_momentum = 0.9, Nesterov; l2 = 1e-4 coupled, no decoupled.
  assert _q("make_optimizer.name") == "sgd"
  assert _q("make_optimizer.momentum") == 0.9
  assert _q("make_optimizer.nesterov") is True
  assert _q("make_optimizer.weight_decay") == 0.0
  assert _q("train.coupled_l2") == 1e-4 and _q("train.coupled_l2_pattern") == "kernel|bias"
  be = name in ("batchensemble", "be_sngp")
  assert (_q("make_optimizer.lr_multipliers") is not None) == be  # fast weights x0.25
  # ResNet-50 at 224 px, images in [0, 1], on TFDS ImageNet.
  assert _q("build_network.backbone").selector == "resnet"
  assert _q("resnet.depth") == 50
  assert _q("build_network.image_size") == 224
  assert tuple(_q("build_network.value_range")) == (0.0, 1.0)
  assert _q("train.dataset") == "tfds:imagenet2012"
  assert _q("ClassificationEvaluator.split") == "validation"
  assert _q(f"{method}.label_smoothing") == 0.0


def test_ub_deterministic():
  _parse(_ub_path("deterministic"))
  assert _q("Deterministic.head_init")["config"]["stddev"] == 0.01


def test_ub_batchensemble():
  _parse(_ub_path("batchensemble"))
  assert _q("BatchEnsemble.ensemble_size") == 4
  assert _q("BatchEnsemble.blocks") is None
  # random_sign_init = -0.5 -> N(1, 0.5).
  assert _q("BatchEnsemble.fast_weight_init") == "normal"
  assert _q("BatchEnsemble.fast_weight_stddev") == 0.5
  assert _q("BatchEnsemble.loss") == "member_ce"
  assert _q("ensemble.use_ensemble_bn") is False  # batchensemble.py flag default


def test_ub_sngp():
  _parse(_ub_path("sngp"))
  assert _q("SNGP.spectral_normalize") is True
  assert _q("spectral_norm.norm_bound") == 6.0
  assert _q("spectral_norm.power_iterations") == 1
  assert _q("gp_head.num_inducing") == 1024
  assert _q("gp_head.kernel_scale") == 20.0  # ub_length_scale(gp_scale=1)
  assert _q("gp_head.random_features") == "orf"
  assert _q("gp_head.scale_random_features") is False
  assert _q("gp_head.output_initializer")["config"]["stddev"] == 0.01
  assert _q("gp_head.normalize_input") is False
  assert _q("gp_head.gp_cov_ridge_penalty") == 1.0
  assert _q("gp_head.gp_cov_momentum") == -1.0
  assert _q("gp_head.mean_field_factor") == 1.0
  assert _q("gp_head.reset_every") == IMAGENET_TRAIN_IMAGES // 4096


def test_ub_heteroscedastic():
  _parse(_ub_path("heteroscedastic"))
  assert _q("het_head.num_factors") == 15
  assert _q("het_head.temperature") == 1.5
  assert _q("het_head.train_mc_samples") == 5000
  assert _q("het_head.test_mc_samples") == 5000


def test_ub_mc_dropout():
  _parse(_ub_path("mc_dropout"))
  assert _q("MCDropout.rate") == 0.05
  assert _q("MCDropout.num_samples") == 10
  # resnet50_dropout: dropout in every residual block, whole filters (filterwise_dropout).
  assert _q("MCDropout.placement") == "backbone"
  assert _q("MCDropout.filterwise") is True


def test_ub_hetsngp():
  _parse(_ub_path("hetsngp"))
  assert _q("het_head.num_factors") == 15
  assert _q("het_head.temperature") == 1.25
  assert _q("het_head.train_mc_samples") == 5000
  assert _q("het_head.share_samples_across_batch") is True
  assert _q("HetSNGP.inference") == "edward2"
  assert _q("HetSNGP.sngp_var_weight") == 1.0 and _q("HetSNGP.het_var_weight") == 1.0
  assert _q("gp_head.kernel_scale") == 20.0 and _q("gp_head.random_features") == "orf"
  assert _q("gp_head.l2_reg") == 1e-6
  assert _q("spectral_norm.norm_bound") == 6.0
  assert _q("gp_head.num_inducing") == 1024
  assert _q("gp_head.normalize_input") is False
  assert _q("gp_head.gp_cov_momentum") == -1.0
  assert _q("gp_head.gp_cov_ridge_penalty") == 1.0
  assert _q("gp_head.reset_every") == IMAGENET_TRAIN_IMAGES // 4096


def test_ub_be_sngp():
  _parse(_ub_path("be_sngp"))
  assert _q("ensemble.ensemble_size") == 4
  assert _q("ensemble.fast_weight_init") == "ones"  # random_sign_init = 1.0
  assert _q("ensemble.use_ensemble_bn") is True  # sngp_batchensemble.py flag default
  # use_spec_norm = False: the modifier normalises neither layer kind.
  assert _q("spectral_norm.dense") is False
  assert _q("spectral_norm.conv") is False
  assert _q("gp_head.num_inducing") == 1024
  assert _q("gp_head.gp_cov_ridge_penalty") == 1e-3
  assert _q("gp_head.gp_cov_momentum") == 0.999
  assert _q("gp_head.mean_field_factor") == 1e-5
  assert _q("gp_head.reset_every") is None


# --- ViT-Plex L/32 fine-tuning ------------------------------------------------------

PLEX = {
  # file -> (dataset, total_steps, num_factors, temperature grid, lr grid)
  "vit_l32_plex_cifar10": (
    "tfds:cifar10",
    10_000,
    0,
    (0.15, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0),
    (0.03, 0.01, 0.003, 0.001),
  ),
  "vit_l32_plex_imagenet": (
    "tfds:imagenet2012",
    40_000,
    15,
    (1.25, 2.0, 2.5, 3.0),
    (0.06, 0.03, 0.01),
  ),
}


@pytest.mark.parametrize("name", sorted(PLEX))
def test_plex_finetune(name):
  dataset, steps, factors, temperatures, lrs = PLEX[name]
  _parse(os.path.join("experiments", "plex", f"{name}.gin"))
  assert _method_name() == "Plex"
  assert _q("vit.variant") == "L/32"
  assert _q("vit.pooling") == "token"
  assert _q("build_network.image_size") == 384
  # ImageNet-21K branch: be_layers = (21, 22, 23), ens_size = 3, random_sign_init = -0.5.
  assert tuple(_q("ensemble.blocks")) == (21, 22, 23)
  assert _q("ensemble.ensemble_size") == 3
  assert _q("ensemble.fast_weight_init") == "normal"
  assert _q("ensemble.fast_weight_stddev") == 0.5
  assert _q("het_head.multilabel") is False
  assert _q("het_head.train_mc_samples") == 1000
  assert _q("het_head.test_mc_samples") == 1000
  assert _q("het_head.num_factors") == factors
  assert _q("het_head.temperature") in temperatures
  assert _q("make_optimizer.learning_rate") in lrs
  assert _q("make_optimizer.name") == "sgd"
  assert _q("make_optimizer.momentum") == 0.9
  assert _q("make_optimizer.global_clipnorm") == 1.0
  assert _q("make_optimizer.weight_decay") == 0.0
  assert _q("make_optimizer.warmup_steps") == 500
  assert _q("make_optimizer.decay") == "cosine"
  assert _q("train.batch_size") == 512
  assert _q("train.total_steps") == steps
  assert _q("train.dataset") == dataset
  assert _q("train.warm_start")  # a placeholder path the user replaces
  assert _q("train.adapt_checkpoint") is True


# --- The recipes' pieces can be constructed (no network is built) ---------------------

RECIPES = [_ub_path(n) for n in sorted(UB)] + [
  os.path.join("experiments", "plex", f"{n}.gin") for n in sorted(PLEX)
]


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_pieces_construct(path):
  _parse(path)
  method = _q("train.method").scoped_configurable_fn()
  assert _q("train.batch_size") % method.batch_multiple == 0
  parse_ops(_q("train.preprocess"))
  optimizer = optim.make_optimizer(_q("train.total_steps"))
  assert optimizer is not None
  for ref in _q("train.evaluators"):
    evaluator = ref.scoped_configurable_fn()
    for attr in ("preprocess", "train_preprocess"):
      ops = getattr(evaluator, attr, None)
      if ops:
        parse_ops(ops)
    for _, spec in getattr(evaluator, "ood", {}).items():
      parse_ops(spec[2])
